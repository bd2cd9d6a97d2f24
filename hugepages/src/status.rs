//! The default-size hugetlb pool as `/proc/meminfo` reports it.

use std::{fs, io};

/// The `HugePages_*` counters of `/proc/meminfo`, which describe the default hugepage size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugeTlbStatus {
    /// `HugePages_Total`: pages in the pool.
    pub total: u64,
    /// `HugePages_Free`: pages not faulted in, including reserved ones.
    pub free: u64,
    /// `HugePages_Rsvd`: free pages already promised to existing mappings.
    pub reserved: u64,
    /// `HugePages_Surp`: pages above `nr_hugepages` (from `nr_overcommit_hugepages`).
    pub surplus: u64,
    /// `Hugepagesize` in bytes.
    pub page_size: u64,
}

impl HugeTlbStatus {
    /// Free pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// Reads the hugetlb pool counters from `/proc/meminfo`.
pub fn hugetlb_status() -> io::Result<HugeTlbStatus> {
    parse_meminfo(&fs::read_to_string("/proc/meminfo")?)
}

fn parse_meminfo(text: &str) -> io::Result<HugeTlbStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {name} in /proc/meminfo")))
    };
    Ok(HugeTlbStatus {
        total: field("HugePages_Total")?,
        free: field("HugePages_Free")?,
        reserved: field("HugePages_Rsvd")?,
        surplus: field("HugePages_Surp")?,
        page_size: field("Hugepagesize")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal: 1 kB\nHugePages_Total:       4\nHugePages_Free:        3\n\
                    HugePages_Rsvd:        1\nHugePages_Surp:        0\n\
                    Hugepagesize:       2048 kB\n";
        let s = parse_meminfo(text).unwrap();
        assert_eq!(s, HugeTlbStatus { total: 4, free: 3, reserved: 1, surplus: 0, page_size: 2 << 20 });
        assert_eq!(s.available(), 2);
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }
}
