//! The only owner of raw memory mappings: 2 MiB hugetlb, then THP, then 4 KiB pages; RAII.
//!
//! We call `mmap` directly instead of using the `hugepage-rs` crate: hugepage-rs is an allocator
//! wrapper around `MAP_HUGETLB` only, with no THP or 4 KiB fallback chain and no report of what was
//! obtained. The canvas, AF_XDP UMEM and io_uring buffer rings need RAII mappings that fall back
//! and say what they got.
//!
//! Layers: `sys` (syscalls) → [`mapping`] ([`Mapping`] and its fallback chain); [`status`] reads
//! `/proc/meminfo`.

use std::{fmt, io};

pub mod mapping;
pub mod status;
mod sys;

pub use mapping::Mapping;
pub use status::{hugetlb_status, HugeTlbStatus};

/// Size of a hugetlb page and of the alignment used for THP regions.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Where the kernel sysctl for the default-size hugetlb pool lives.
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Which backings [`Mapping::new`] may try, best first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// 2 MiB hugetlb, then THP (`MADV_HUGEPAGE`), then 4 KiB pages.
    #[default]
    Auto,
    /// 2 MiB hugetlb or an error that says how to reserve pages.
    HugeTlbOnly,
    /// THP, then 4 KiB pages.
    NoHugeTlb,
    /// Plain 4 KiB pages.
    Small,
}

/// The backing a [`Mapping`] actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Reserved 2 MiB hugetlb pages (`MAP_HUGETLB | MAP_HUGE_2MB`).
    HugeTlb2M,
    /// A 2 MiB-aligned region for which `madvise(MADV_HUGEPAGE)` was accepted. This is a request:
    /// the kernel may still back parts of it with 4 KiB pages (see `AnonHugePages` in
    /// `/proc/self/smaps`).
    Thp,
    /// Base pages, normally 4 KiB.
    Small,
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backing::HugeTlb2M => "2 MiB hugetlb pages",
            Backing::Thp => "a THP-advised region",
            Backing::Small => "4 KiB pages",
        })
    }
}

/// Number of 2 MiB pages needed to hold `len` bytes.
pub fn pages_needed(len: usize) -> u64 {
    len.div_ceil(HUGE_PAGE_SIZE) as u64
}

/// Why a mapping could not be created.
#[derive(Debug)]
pub enum Error {
    /// A zero-length mapping was requested.
    ZeroLength,
    /// The length overflows when rounded up to the page size.
    TooLarge(usize),
    /// [`Policy::HugeTlbOnly`] and too few unreserved 2 MiB hugetlb pages are free.
    NoFreeHugePages {
        /// Pages the mapping needs.
        needed: u64,
        /// Pages free and not reserved by other mappings.
        free: u64,
        /// `HugePages_Total`.
        total: u64,
    },
    /// `mmap` failed for another reason.
    Mmap {
        /// What was being mapped.
        backing: Backing,
        /// Bytes asked of the kernel.
        len: usize,
        /// The errno.
        source: io::Error,
    },
}

impl Error {
    /// The `nr_hugepages` value that would leave `needed` pages free.
    fn nr_hugepages_to_set(needed: u64, free: u64, total: u64) -> u64 {
        total + needed.saturating_sub(free)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ZeroLength => f.write_str("a mapping of 0 bytes was requested; pass a length > 0"),
            Error::TooLarge(len) => write!(f, "{len} B overflows when rounded up to the page size"),
            &Error::NoFreeHugePages { needed, free, total } => {
                let n = Error::nr_hugepages_to_set(needed, free, total);
                write!(
                    f,
                    "need {needed} free 2 MiB hugepages but only {free} are free (total {total}): \
                     reserve them with `echo {n} > {NR_HUGEPAGES}` \
                     (or `sysctl vm.nr_hugepages={n}`), or run with hugepages off"
                )
            }
            Error::Mmap { backing: Backing::HugeTlb2M, len, source } => write!(
                f,
                "mmap of {len} B in 2 MiB hugetlb pages failed: {source}; check \
                 `grep Huge /proc/meminfo` and the hugetlb cgroup limit, or run with hugepages off"
            ),
            Error::Mmap { backing, len, source } => write!(
                f,
                "mmap of {len} B in {backing} failed: {source}; check free memory, `ulimit -v` and \
                 vm.max_map_count"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Mmap { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_needed_rounds_up() {
        assert_eq!(pages_needed(0), 0);
        assert_eq!(pages_needed(1), 1);
        assert_eq!(pages_needed(1_000_000), 1);
        assert_eq!(pages_needed(HUGE_PAGE_SIZE), 1);
        assert_eq!(pages_needed(HUGE_PAGE_SIZE + 1), 2);
    }

    #[test]
    fn no_free_pages_message_says_what_to_echo() {
        let e = Error::NoFreeHugePages { needed: 2, free: 1, total: 3 };
        let msg = e.to_string();
        assert!(msg.starts_with("need 2 free 2 MiB hugepages but only 1 are free (total 3)"));
        assert!(msg.contains("`echo 4 > /proc/sys/vm/nr_hugepages`"), "{msg}");
        assert!(msg.contains("`sysctl vm.nr_hugepages=4`"), "{msg}");
        assert!(msg.ends_with("or run with hugepages off"), "{msg}");
        assert!(Error::ZeroLength.to_string().contains("0 bytes"));
    }
}
