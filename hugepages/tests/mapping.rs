//! Mapping tests; those that resize the hugetlb pool need root, and fail without it under CI.

use std::{
    fs,
    sync::{Mutex, MutexGuard},
};

use hugepages::{hugetlb_status, Backing, Error, Mapping, Policy, HUGE_PAGE_SIZE};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const NR_OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Serializes the tests: some resize the hugetlb pool, and all inspect this process's memory map.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's VMAs from /proc/self/smaps: (start, end, field lines).
fn vmas() -> Vec<(usize, usize, String)> {
    let mut vmas: Vec<(usize, usize, String)> = Vec::new();
    for line in fs::read_to_string("/proc/self/smaps").unwrap().lines() {
        match hex_range(line) {
            Some((start, end)) => vmas.push((start, end, String::new())),
            None => vmas.last_mut().unwrap().2.extend([line, "\n"]),
        }
    }
    vmas
}

/// Parses the `start-end` that opens an smaps VMA header line.
fn hex_range(line: &str) -> Option<(usize, usize)> {
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
}

/// The smaps field lines of the VMA holding `addr`.
fn vma_of(addr: *const u8) -> String {
    let addr = addr as usize;
    vmas().into_iter().find(|v| v.0 <= addr && addr < v.1).expect("address is mapped").2
}

fn field<'a>(vma: &'a str, name: &str) -> &'a str {
    vma.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).unwrap_or_default().trim()
}

/// Checks the mapping is zero-filled and writable.
fn exercise(m: &mut Mapping) {
    assert!(m.iter().all(|&b| b == 0), "not zero-filled");
    m.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    assert!(m.as_ref().iter().enumerate().all(|(i, &b)| b == i as u8));
}

/// Drops `m` and checks its whole mapped range left /proc/self/smaps.
fn assert_unmapped_after_drop(m: Mapping) {
    let (start, end) = (m.as_ptr() as usize, m.as_ptr() as usize + m.mapped_len());
    let overlaps = || vmas().iter().any(|v| v.0 < end && start < v.1);
    assert!(overlaps(), "mapping not listed in /proc/self/smaps");
    drop(m);
    assert!(!overlaps(), "{start:#x}-{end:#x} still mapped after drop");
}

fn read_u64(path: &str) -> u64 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Sets a sysctl and writes the old value back on drop, also when the test panics.
struct Sysctl {
    path: &'static str,
    old: u64,
}

impl Sysctl {
    fn set(path: &'static str, value: u64) -> Sysctl {
        let guard = Sysctl { path, old: read_u64(path) };
        fs::write(path, value.to_string()).unwrap_or_else(|e| panic!("writing {value} to {path}: {e}"));
        guard
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(self.path, self.old.to_string()) {
            eprintln!("could not restore {} to {}: {e}", self.path, self.old);
        }
    }
}

/// Whether we may resize the hugetlb pool. Without root: skip with a note, or fail when CI is set.
fn may_resize_pool(what: &str) -> bool {
    if fs::OpenOptions::new().write(true).open(NR_HUGEPAGES).is_ok() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let need = format!("needs root (write access to {NR_HUGEPAGES}) to {what}");
    assert!(!ci, "{need}; CI is set, so it may not be skipped: run these tests as root");
    eprintln!("note: skipped, {need}");
    false
}

/// Leaves no hugetlb page for new mappings until the returned guards drop; `None` means skip.
fn without_free_hugepages() -> Option<Vec<Sysctl>> {
    let s = hugetlb_status().unwrap();
    if s.available() == 0 && read_u64(NR_OVERCOMMIT) == 0 {
        return Some(Vec::new());
    }
    if !may_resize_pool("take the free hugetlb pages away") {
        return None;
    }
    let nr = read_u64(NR_HUGEPAGES).saturating_sub(s.available());
    let guards = vec![Sysctl::set(NR_OVERCOMMIT, 0), Sysctl::set(NR_HUGEPAGES, nr)];
    assert_eq!(hugetlb_status().unwrap().available(), 0, "could not drain the hugetlb pool");
    Some(guards)
}

#[test]
fn zero_length_is_rejected_and_mapping_is_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mapping>();
    assert!(matches!(Mapping::new(0, Policy::Auto), Err(Error::ZeroLength)));
}

#[test]
fn small_is_zeroed_writable_and_unmapped_on_drop() {
    let _lock = lock();
    let mut m = Mapping::new(1_000_000, Policy::Small).unwrap();
    assert_eq!(
        (m.backing(), m.len(), m.is_empty(), m.fallback_reason()),
        (Backing::Small, 1_000_000, false, None)
    );
    assert!(m.mapped_len() >= m.len() && m.mapped_len() < m.len() + 65536);
    if m.mapped_len() == 245 * 4096 {
        assert_eq!(m.report(), "1000000 B in 245 x 4 KiB pages");
    }
    exercise(&mut m);
    assert_unmapped_after_drop(m);
}

#[test]
fn no_hugetlb_gets_an_aligned_thp_advised_region() {
    let _lock = lock();
    let mut m = Mapping::new(3 << 20, Policy::NoHugeTlb).unwrap();
    if fs::read_to_string(THP_ENABLED).is_ok_and(|mode| !mode.contains("[never]")) {
        assert_eq!((m.backing(), m.mapped_len(), m.fallback_reason()), (Backing::Thp, 4 << 20, None));
        assert_eq!(m.as_ptr() as usize % HUGE_PAGE_SIZE, 0);
        assert_eq!(m.report(), "3145728 B in a 4 MiB THP-advised 2 MiB-aligned region");
        let vma = vma_of(m.as_ptr());
        assert!(field(&vma, "VmFlags").split(' ').any(|f| f == "hg"), "no MADV_HUGEPAGE flag:\n{vma}");
        assert_eq!(field(&vma, "THPeligible"), "1", "{vma}");
    } else {
        assert_eq!(m.backing(), Backing::Small);
        assert!(m.fallback_reason().unwrap().contains("[never]"));
    }
    exercise(&mut m);
    assert_unmapped_after_drop(m);
}

#[test]
fn hugetlb_only_maps_2m_pages_when_reserved() {
    let _lock = lock();
    if !may_resize_pool("reserve 2 MiB hugetlb pages") {
        return;
    }
    let want = read_u64(NR_HUGEPAGES) + 2;
    let _restore = Sysctl::set(NR_HUGEPAGES, want);
    let got = read_u64(NR_HUGEPAGES);
    assert!(got >= want, "kernel reserved only {got} of {want} hugetlb pages (memory fragmented?)");

    let mut m = Mapping::new(3 << 20, Policy::HugeTlbOnly).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.backing(), m.mapped_len(), m.fallback_reason()), (Backing::HugeTlb2M, 4 << 20, None));
    assert_eq!(m.report(), "3145728 B in 2 x 2 MiB hugetlb pages");
    exercise(&mut m);
    let vma = vma_of(m.as_ptr());
    assert_eq!(field(&vma, "KernelPageSize"), "2048 kB", "{vma}");
    assert_eq!(field(&vma, "Private_Hugetlb"), "4096 kB", "{vma}");
    assert_unmapped_after_drop(m);

    let m = Mapping::new(1_000_000, Policy::Auto).unwrap();
    assert_eq!(m.report(), "1000000 B in 1 x 2 MiB hugetlb page");
}

#[test]
fn hugetlb_only_without_free_pages_says_how_to_reserve() {
    let _lock = lock();
    let Some(_pool) = without_free_hugepages() else {
        return;
    };
    let total = hugetlb_status().unwrap().total;
    let err = Mapping::new(1_000_000, Policy::HugeTlbOnly).unwrap_err();
    assert!(matches!(err, Error::NoFreeHugePages { needed: 1, free: 0, total: t } if t == total), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("need 1 free 2 MiB hugepages but only 0 are free (total {total})")),
        "{msg}"
    );
    assert!(msg.contains(&format!("`echo {} > /proc/sys/vm/nr_hugepages`", total + 1)), "{msg}");
}

#[test]
fn auto_falls_back_and_says_why() {
    let _lock = lock();
    let Some(_pool) = without_free_hugepages() else {
        return;
    };
    let mut m = Mapping::new(1_000_000, Policy::Auto).unwrap();
    assert_ne!(m.backing(), Backing::HugeTlb2M);
    let reason = m.fallback_reason().expect("a fallback reason").to_owned();
    assert!(reason.contains("> /proc/sys/vm/nr_hugepages"), "{reason}");
    if hugetlb_status().unwrap().total == 0 {
        assert!(reason.starts_with("no hugetlb pages reserved: echo 1 > "), "{reason}");
    }
    assert!(m.report().ends_with(&format!(" ({reason})")), "{}", m.report());
    eprintln!("{}", m.report());
    exercise(&mut m);
    assert_unmapped_after_drop(m);
}
