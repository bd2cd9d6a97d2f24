//! [`Mapping`]: an owned anonymous mapping, and the hugetlb → THP → 4 KiB fallback chain.

use std::{
    io,
    ops::{Deref, DerefMut},
    ptr::NonNull,
    slice,
};

use crate::{
    pages_needed, status::hugetlb_status, sys, Backing, Error, Policy, HUGE_PAGE_SIZE, NR_HUGEPAGES,
};

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// An owned, zero-filled, read-write anonymous mapping, unmapped on drop.
///
/// ```
/// let mut canvas = hugepages::Mapping::new(1_000_000, hugepages::Policy::Auto)?;
/// canvas[999_999] = 0xff;
/// println!("canvas: {}", canvas.report());
/// # Ok::<(), hugepages::Error>(())
/// ```
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    mapped_len: usize,
    backing: Backing,
    fallback_reason: Option<String>,
}

// SAFETY: a Mapping exclusively owns its memory like a Box<[u8]>: reads go through &self, writes
// through &mut self, and munmap works from any thread.
unsafe impl Send for Mapping {}
// SAFETY: &Mapping only hands out shared reads of the memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes, rounded up to the page size, with the best backing `policy` allows.
    pub fn new(len: usize, policy: Policy) -> Result<Mapping, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let mut reasons = Vec::new();
        let (ptr, mapped_len, backing) = map_with_fallback(len, policy, &mut reasons)?;
        let fallback_reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        Ok(Mapping { ptr, len, mapped_len, backing, fallback_reason })
    }

    /// What backs the mapping.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The requested length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: zero-length mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped length: [`len`](Self::len) rounded up to the backing's page size.
    pub fn mapped_len(&self) -> usize {
        self.mapped_len
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the mapping, for writes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Why the policy's first choice was not obtained, with what to do about it; `None` if it was.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// One line for logs, e.g. `1000000 B in 1 x 2 MiB hugetlb page`.
    pub fn report(&self) -> String {
        let page = sys::page_size();
        let what = match self.backing {
            Backing::HugeTlb2M if self.mapped_len == HUGE_PAGE_SIZE => "1 x 2 MiB hugetlb page".into(),
            Backing::HugeTlb2M => {
                format!("{} x 2 MiB hugetlb pages", self.mapped_len / HUGE_PAGE_SIZE)
            }
            Backing::Thp => format!("a {} MiB THP-advised 2 MiB-aligned region", self.mapped_len >> 20),
            Backing::Small => format!("{} x {} KiB pages", self.mapped_len / page, page >> 10),
        };
        match &self.fallback_reason {
            Some(reason) => format!("{} B in {what} ({reason})", self.len),
            None => format!("{} B in {what}", self.len),
        }
    }
}

/// Walks the policy's fallback chain, noting in `reasons` why each skipped backing failed.
fn map_with_fallback(
    len: usize,
    policy: Policy,
    reasons: &mut Vec<String>,
) -> Result<(NonNull<u8>, usize, Backing), Error> {
    let huge_len = len.checked_next_multiple_of(HUGE_PAGE_SIZE).ok_or(Error::TooLarge(len))?;
    if matches!(policy, Policy::Auto | Policy::HugeTlbOnly) {
        match sys::mmap_anon(huge_len, libc::MAP_HUGETLB | libc::MAP_HUGE_2MB) {
            Ok(ptr) => return Ok((ptr, huge_len, Backing::HugeTlb2M)),
            Err(source) => {
                let error = hugetlb_error(len, huge_len, source);
                if policy == Policy::HugeTlbOnly {
                    return Err(error);
                }
                reasons.push(match error {
                    Error::NoFreeHugePages { needed, total: 0, .. } => {
                        format!("no hugetlb pages reserved: echo {needed} > {NR_HUGEPAGES}")
                    }
                    Error::NoFreeHugePages { needed, free, total } => format!(
                        "only {free} of {total} hugetlb pages free, need {needed}: \
                         echo {} > {NR_HUGEPAGES}",
                        Error::nr_hugepages_to_set(needed, free, total)
                    ),
                    e => e.to_string(),
                });
            }
        }
    }
    if matches!(policy, Policy::Auto | Policy::NoHugeTlb) {
        match map_thp(huge_len) {
            Ok(ptr) => return Ok((ptr, huge_len, Backing::Thp)),
            Err(reason) => reasons.push(reason),
        }
    }
    let small_len = len.checked_next_multiple_of(sys::page_size()).ok_or(Error::TooLarge(len))?;
    let ptr = sys::mmap_anon(small_len, 0).map_err(|source| Error::Mmap {
        backing: Backing::Small,
        len: small_len,
        source,
    })?;
    Ok((ptr, small_len, Backing::Small))
}

/// Turns a failed hugetlb mmap into an error that explains a shortage of free pages.
fn hugetlb_error(len: usize, huge_len: usize, source: io::Error) -> Error {
    let needed = pages_needed(len);
    if source.raw_os_error() == Some(libc::ENOMEM) {
        if let Ok(s) = hugetlb_status() {
            if s.page_size == HUGE_PAGE_SIZE as u64 && s.available() < needed {
                return Error::NoFreeHugePages { needed, free: s.available(), total: s.total };
            }
        }
    }
    Error::Mmap { backing: Backing::HugeTlb2M, len: huge_len, source }
}

/// Maps `len` (a multiple of 2 MiB) bytes at a 2 MiB-aligned address and advises THP for them.
fn map_thp(len: usize) -> Result<NonNull<u8>, String> {
    if std::fs::read_to_string(THP_ENABLED).is_ok_and(|mode| mode.contains("[never]")) {
        return Err(format!("THP disabled: {THP_ENABLED} is [never]"));
    }
    let over = len.checked_add(HUGE_PAGE_SIZE).ok_or("length overflows")?;
    let raw = sys::mmap_anon(over, 0).map_err(|e| format!("mmap of {over} B for THP failed: {e}"))?;
    let addr = raw.as_ptr() as usize;
    let head = addr.next_multiple_of(HUGE_PAGE_SIZE) - addr;
    let aligned = raw.as_ptr().wrapping_add(head);
    // SAFETY: head and tail are the parts of our fresh `over`-byte mapping outside the aligned
    // window; nothing refers to them. `head` and `len` are page multiples, so both stay aligned.
    unsafe {
        sys::munmap(raw.as_ptr(), head);
        sys::munmap(aligned.wrapping_add(len), over - head - len);
    }
    let aligned = NonNull::new(aligned).ok_or("aligned address is 0")?;
    sys::madvise_hugepage(aligned, len).map_err(|e| {
        // SAFETY: the aligned window is ours and was never handed out.
        unsafe { sys::munmap(aligned.as_ptr(), len) };
        format!("madvise(MADV_HUGEPAGE) failed: {e}")
    })?;
    Ok(aligned)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own `mapped_len` bytes at `ptr`; `&mut self` proves no borrow of them remains.
        unsafe { sys::munmap(self.ptr.as_ptr(), self.mapped_len) };
    }
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= mapped_len` bytes at `ptr` are mapped read-write and initialised (the
        // kernel zero-fills them) for as long as `self` lives; writes need `&mut self`.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Mapping {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference to the bytes.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Mapping {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}
