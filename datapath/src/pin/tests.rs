//! Unit tests of the pin plan, the IRQ name matching and the CPU lists, over recorded `/proc/interrupts`.

use std::collections::{BTreeMap, BTreeSet};

use super::irq::*;
use super::sys::*;
use super::*;

/// A 2-CPU VM with no NIC IRQs (virtio balloon, console, block only).
const TWO_CPU_NO_NIC: &str = "           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 26:          0         13  IO-APIC   4-edge      ttyS0
 28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 31:          0       2261 PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats
 35:          0          1 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0     178858 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
NMI:          0          0   Non-maskable interrupts
LOC:   10471177    9060667   Local timer interrupts
ERR:          0
MIS:          0
";

/// virtio_net with 2 queue pairs: netdev device is virtio2 under PCI 0000:00:03.0.
const VIRTIO: &str = "           CPU0       CPU1       CPU2       CPU3       
 26:          0         13          0          0  IO-APIC   4-edge      ttyS0
 35:          0          1          0          0 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0     178858          0          0 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 37:          0          0          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       4754          0          0 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       3816          0          0          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 40:          0          0       5120          0 PCI-MSIX-0000:00:03.0   3-edge      virtio2-input.1
 41:          0          0          0       4001 PCI-MSIX-0000:00:03.0   4-edge      virtio2-output.1
 42:          0          0          0          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-input.0
NMI:          0          0          0          0   Non-maskable interrupts
";

/// ConnectX (mlx5), two ports, 4 channels each.
const MLX5: &str = "            CPU0       CPU1       CPU2       CPU3       
   0:         36          0          0          0   IO-APIC   2-edge      timer
   9:          0          0          0          0   IO-APIC   9-fasteoi   acpi
 104:          0          0          0          0  IR-PCI-MSI 31981568-edge      mlx5_async0@pci:0000:3b:00.0
 105:      10233          0          0          0  IR-PCI-MSI 31981569-edge      mlx5_comp0@pci:0000:3b:00.0
 106:          0       9944          0          0  IR-PCI-MSI 31981570-edge      mlx5_comp1@pci:0000:3b:00.0
 107:          0          0       9321          0  IR-PCI-MSI 31981571-edge      mlx5_comp2@pci:0000:3b:00.0
 108:          0          0          0       8812  IR-PCI-MSI 31981572-edge      mlx5_comp3@pci:0000:3b:00.0
 109:          0          0          0          0  IR-PCI-MSI 31983616-edge      mlx5_async0@pci:0000:3b:00.1
 110:          7          0          0          0  IR-PCI-MSI 31983617-edge      mlx5_comp0@pci:0000:3b:00.1
 111:          0          7          0          0  IR-PCI-MSI 31983618-edge      mlx5_comp1@pci:0000:3b:00.1
 112:          0          0          7          0  IR-PCI-MSI 31983619-edge      mlx5_comp2@pci:0000:3b:00.1
 113:          0          0          0          7  IR-PCI-MSI 31983620-edge      mlx5_comp3@pci:0000:3b:00.1
NMI:          0          0          0          0   Non-maskable interrupts
";

/// Intel: ixgbe/igb style (eth1, plus an eth10 to confuse a substring match, plus igb-style split
/// vectors on eth2), i40e/ice/iavf style with the driver prefix and a misc vector, sfc-style bare index.
const INTEL: &str = "            CPU0       CPU1       CPU2       CPU3       
  60:        100          0          0          0  IR-PCI-MSI 1048576-edge      eth10-TxRx-0
  61:          0        100          0          0  IR-PCI-MSI 1048577-edge      eth1-TxRx-0
  62:          0          0        100          0  IR-PCI-MSI 1048578-edge      eth1-TxRx-1
  63:          0          0          0        100  IR-PCI-MSI 1048579-edge      eth1-TxRx-2
  64:        100          0          0          0  IR-PCI-MSI 1048580-edge      eth1-TxRx-3
  65:          1          0          0          0  IR-PCI-MSI 1048581-edge      eth1
  70:          1          0          0          0  IR-PCI-MSI 2097152-edge      i40e-0000:3b:00.0:misc
  71:         10          0          0          0  IR-PCI-MSI 2097153-edge      i40e-ens1f0-TxRx-0
  72:          0         10          0          0  IR-PCI-MSI 2097154-edge      i40e-ens1f0-TxRx-1
  80:          1          0          0          0  IR-PCI-MSI 3145728-edge      ice-0000:5e:00.0:misc
  81:         10          0          0          0  IR-PCI-MSI 3145729-edge      ice-ens2f0-TxRx-0
  82:          0         10          0          0  IR-PCI-MSI 3145730-edge      ice-ens2f0-TxRx-1
  90:          1          0          0          0  IR-PCI-MSI 4194304-edge      iavf-0000:00:05.0:mbx
  91:         10          0          0          0  IR-PCI-MSI 4194305-edge      iavf-eth3-TxRx-0
  92:          0         10          0          0  IR-PCI-MSI 4194306-edge      iavf-eth3-TxRx-1
 100:          0          0         10          0  IR-PCI-MSI 5242880-edge      eth2-tx-0
 101:          0          0          0         10  IR-PCI-MSI 5242881-edge      eth2-rx-0
 102:         10          0          0          0  IR-PCI-MSI 5242882-edge      eth2-tx-1
 103:          0         10          0          0  IR-PCI-MSI 5242883-edge      eth2-rx-1
 110:          0          0         10          0  IR-PCI-MSI 6291456-edge      enp1s0f0-0
 111:          0          0          0         10  IR-PCI-MSI 6291457-edge      enp1s0f0-1
 112:          0          0          0         10  IR-PCI-MSI 6291458-edge      enp1s0f0np1-0
 120:          0          0          0         10  PCI-MSI-edge      ixgbe: eth4-TxRx-3
NMI:          0          0          0          0   Non-maskable interrupts
";

fn irqs(text: &str, iface: &str, dev: Option<&str>, pci: Option<&str>, q: usize) -> Vec<Option<u32>> {
    let (v, m) = find_queue_irqs(&parse_interrupts(text), iface, dev, pci, &BTreeSet::new(), q);
    assert_eq!(m, Method::Name, "{iface}");
    v.into_iter().map(|x| x.map(|x| x.irq)).collect()
}

fn aff(pairs: &[(u32, &str)]) -> BTreeMap<u32, IrqAffinity> {
    pairs
        .iter()
        .map(|&(irq, l)| (irq, IrqAffinity { effective: parse_cpu_list(l), smp: parse_cpu_list("0-3") }))
        .collect()
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
    assert_eq!(parse_cpu_list("5"), Some(vec![5]));
    assert_eq!(parse_cpu_list(" 3,1,1-2 "), Some(vec![1, 2, 3]));
    assert_eq!(parse_cpu_list(""), Some(vec![]));
    assert_eq!(parse_cpu_list("\n"), Some(vec![]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("a"), None);
    assert_eq!(parse_cpu_list("1,,2"), None);
    assert_eq!(parse_cpu_list("-1"), None);
    assert_eq!(parse_cpu_list("0-99999999"), None);
    assert_eq!(fmt_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
    assert_eq!(fmt_list(&[]), "");
}

#[test]
fn interrupts_parse() {
    let l = parse_interrupts(TWO_CPU_NO_NIC);
    assert_eq!(l.iter().map(|l| l.irq).collect::<Vec<_>>(), vec![24, 26, 28, 31, 35, 36]);
    assert_eq!(l[5].tokens, vec!["PCI-MSIX-0000:00:02.0", "1-edge", "virtio1-req.0"]);
    assert_eq!(l[0].name(), "ACPI:Ged");
}

#[test]
fn mlx5_names() {
    let p0 = irqs(MLX5, "ens1f0np0", Some("0000:3b:00.0"), Some("0000:3b:00.0"), 4);
    assert_eq!(p0, vec![Some(105), Some(106), Some(107), Some(108)]);
    let p1 = irqs(MLX5, "ens1f1np1", Some("0000:3b:00.1"), Some("0000:3b:00.1"), 5);
    assert_eq!(p1, vec![Some(110), Some(111), Some(112), Some(113), None]);
}

#[test]
fn intel_names() {
    assert_eq!(irqs(INTEL, "eth1", None, None, 4), vec![Some(61), Some(62), Some(63), Some(64)]);
    assert_eq!(irqs(INTEL, "eth10", None, None, 2), vec![Some(60), None]);
    assert_eq!(
        irqs(INTEL, "ens1f0", Some("0000:3b:00.0"), Some("0000:3b:00.0"), 2),
        vec![Some(71), Some(72)]
    );
    assert_eq!(
        irqs(INTEL, "ens2f0", Some("0000:5e:00.0"), Some("0000:5e:00.0"), 2),
        vec![Some(81), Some(82)]
    );
    assert_eq!(irqs(INTEL, "eth3", Some("0000:00:05.0"), Some("0000:00:05.0"), 2), vec![Some(91), Some(92)]);
    // igb-style split vectors: the RX one, never the TX one.
    assert_eq!(irqs(INTEL, "eth2", None, None, 2), vec![Some(101), Some(103)]);
    // Bare index; enp1s0f0np1 is another interface.
    assert_eq!(irqs(INTEL, "enp1s0f0", None, None, 2), vec![Some(110), Some(111)]);
    assert_eq!(irqs(INTEL, "eth4", None, None, 4), vec![None, None, None, Some(120)]);
}

#[test]
fn virtio_names() {
    assert_eq!(irqs(VIRTIO, "eth0", Some("virtio2"), Some("0000:00:03.0"), 2), vec![Some(38), Some(40)]);
    assert_eq!(irqs(VIRTIO, "eth1", Some("virtio3"), Some("0000:00:04.0"), 1), vec![Some(42)]);
    // The no-NIC machine: virtio1-req.0 is a block device, virtio0 the balloon.
    let (v, m) = find_queue_irqs(
        &parse_interrupts(TWO_CPU_NO_NIC),
        "eth0",
        Some("virtio2"),
        None,
        &BTreeSet::new(),
        1,
    );
    assert_eq!((v, m), (vec![None], Method::NotFound));
}

#[test]
fn msi_order_fallback() {
    let text = "            CPU0       CPU1
  50:          0          0  IR-PCI-MSI 1-edge      xnic-mailbox
  52:          0          0  IR-PCI-MSI 3-edge      xnic-q
  51:          0          0  IR-PCI-MSI 2-edge      xnic-q
  53:          0          0  IR-PCI-MSI 4-edge      xnic-q
  54:          0          0  IR-PCI-MSI 4-edge      other-q
";
    let msi: BTreeSet<u32> = [50, 51, 52, 53].into();
    let (v, m) = find_queue_irqs(&parse_interrupts(text), "eth9", Some("0000:01:00.0"), None, &msi, 4);
    assert_eq!(m, Method::MsiOrder);
    assert_eq!(
        v.iter().map(|x| x.as_ref().map(|x| x.irq)).collect::<Vec<_>>(),
        vec![Some(51), Some(52), Some(53), None]
    );
}

fn four_cpu(text: &str, dev: &str, pci: &str) -> SysView {
    SysView {
        interrupts: text.to_owned(),
        dev_name: Some(dev.to_owned()),
        pci_addr: Some(pci.to_owned()),
        allowed: vec![0, 1, 2, 3],
        online: Some(vec![0, 1, 2, 3]),
        // SMT pairs (0,2) and (1,3).
        siblings: [(0, vec![0, 2]), (1, vec![1, 3]), (2, vec![0, 2]), (3, vec![1, 3])].into(),
        ..SysView::default()
    }
}

#[test]
fn irq_policy_mlx5() {
    let mut sys = four_cpu(MLX5, "0000:3b:00.0", "0000:3b:00.0");
    sys.irq_affinity = aff(&[(105, "0"), (106, "1"), (107, "2"), (108, "3")]);
    let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(0), Some(1)]);
    assert_eq!(p.queue_irqs, vec![Some(105), Some(106)]);
    assert_eq!(p.master, Some(3), "{:?}", p.notes);
    // 4 queues: every CPU has a worker; master shares the highest one.
    let p = plan_from(&sys, "ens1f0np0", 4, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(p.master, Some(3));
    assert!(p.notes.iter().any(|n| n == "master shares CPU 3 with worker 3"), "{:?}", p.notes);
    // 6 queues: queues 4 and 5 have no IRQ and fall back round-robin.
    let p = plan_from(&sys, "ens1f0np0", 6, PinPolicy::Irq);
    assert_eq!(p.workers[4..], [Some(0), Some(1)]);
    assert_eq!(p.queue_irqs[4..], [None, None]);
    assert!(p.notes.iter().any(|n| n.starts_with("no IRQ found for queue(s) 4-5")), "{:?}", p.notes);
}

#[test]
fn sibling_policy() {
    let mut sys = four_cpu(MLX5, "0000:3b:00.0", "0000:3b:00.0");
    sys.irq_affinity = aff(&[(105, "0"), (106, "1")]);
    let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
    assert_eq!(p.workers, vec![Some(2), Some(3)], "{:?}", p.notes);
    // CPUs 0 and 1 serve the IRQs, 2 and 3 run workers: master on the highest IRQ CPU.
    assert_eq!(p.master, Some(1));
    // No SMT: the IRQ CPU itself, noted.
    sys.siblings = (0..4).map(|c| (c, vec![c])).collect();
    let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
    assert_eq!(p.workers, vec![Some(0), Some(1)]);
    assert!(p.notes.iter().any(|n| n.contains("no allowed SMT sibling")), "{:?}", p.notes);
    // Sibling outside the allowed set.
    sys.siblings = [(0, vec![0, 2]), (1, vec![1, 3])].into();
    sys.allowed = vec![0, 1, 3];
    let p = plan_from(&sys, "ens1f0np0", 2, PinPolicy::Sibling);
    assert_eq!(p.workers, vec![Some(0), Some(3)]);
}

#[test]
fn virtio_plan_uses_effective_affinity_and_allowed() {
    let mut sys = four_cpu(VIRTIO, "virtio2", "0000:00:03.0");
    sys.irq_affinity = aff(&[(38, "1"), (40, "2")]);
    let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(1), Some(2)]);
    assert_eq!(p.master, Some(3));
    // Empty effective affinity: smp_affinity_list (0-3) ∩ allowed.
    sys.irq_affinity.get_mut(&40).unwrap().effective = Some(vec![]);
    sys.allowed = vec![1, 3];
    let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(1), Some(1)]);
    assert_eq!(p.master, Some(3));
    assert!(p.notes.iter().any(|n| n.contains("smp_affinity_list")), "{:?}", p.notes);
    // Affinity wholly outside the allowed set: fallback.
    sys.allowed = vec![0, 3];
    let p = plan_from(&sys, "eth0", 1, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(0)], "{:?}", p.notes);
    assert!(p.notes.iter().any(|n| n.contains("has no allowed CPU")));
}

#[test]
fn pending_affinity_move_follows_smp_affinity() {
    // pin_irqs.sh just moved queue 1's IRQ to CPU 2; no interrupt since, so effective still says 0.
    let mut sys = four_cpu(VIRTIO, "virtio2", "0000:00:03.0");
    sys.irq_affinity = aff(&[(38, "0"), (40, "0")]);
    sys.irq_affinity.get_mut(&38).unwrap().smp = parse_cpu_list("0");
    sys.irq_affinity.get_mut(&40).unwrap().smp = parse_cpu_list("2");
    let p = plan_from(&sys, "eth0", 2, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(0), Some(2)], "{:?}", p.notes);
    assert!(p.notes.iter().any(|n| n.contains("move pending")), "{:?}", p.notes);
}

#[test]
fn nic_without_irqs_falls_back() {
    let sys = SysView {
        interrupts: TWO_CPU_NO_NIC.to_owned(),
        dev_name: Some("virtio2".to_owned()),
        allowed: vec![0, 1],
        ..SysView::default()
    };
    let p = plan_from(&sys, "eth0", 1, PinPolicy::Irq);
    assert_eq!((p.workers, p.master), (vec![Some(0)], Some(1)));
    assert!(p.notes[0].contains("no queue IRQs found"), "{:?}", p.notes);
}

fn virtual_2cpu() -> SysView {
    SysView {
        is_virtual: true,
        allowed: vec![0, 1],
        online: Some(vec![0, 1]),
        interrupts: TWO_CPU_NO_NIC.to_owned(),
        ..SysView::default()
    }
}

#[test]
fn virtual_two_cpus_two_workers() {
    let p = plan_from(&virtual_2cpu(), "veth0", 2, PinPolicy::Irq);
    assert_eq!(p.workers, vec![Some(0), Some(1)]);
    assert_eq!(p.master, Some(1));
    assert_eq!(p.queue_irqs, vec![None, None]);
    assert_eq!(p.notes, vec![
            "veth0 is a virtual device (no IRQs): workers pinned round-robin over allowed CPUs 0-1; master shares \
             CPU 1 with worker 1"
        ]);
}

#[test]
fn virtual_two_cpus_one_worker() {
    let p = plan_from(&virtual_2cpu(), "veth0", 1, PinPolicy::Sibling);
    assert_eq!((p.workers.clone(), p.master), (vec![Some(0)], Some(1)));
    assert!(p.notes[0].starts_with("veth0 is a virtual device"), "{:?}", p.notes);
    assert!(p.notes[0].contains("CPU 1 kept for the master"));
    // Three workers on two CPUs: round-robin, master with the fewest (then highest).
    let p = plan_from(&virtual_2cpu(), "veth0", 3, PinPolicy::Irq);
    assert_eq!((p.workers.clone(), p.master), (vec![Some(0), Some(1), Some(0)], Some(1)));
}

#[test]
fn none_policy() {
    let p = plan_from(&virtual_2cpu(), "veth0", 2, PinPolicy::None);
    assert_eq!(
        p,
        PinPlan {
            workers: vec![None, None],
            master: None,
            queue_irqs: vec![None, None],
            notes: vec!["pinning disabled".to_owned()]
        }
    );
    assert_eq!(plan("does-not-exist0", 2, PinPolicy::None).unwrap(), p);
}

#[test]
fn real_loopback() {
    let allowed = allowed_cpus().unwrap();
    assert!(!allowed.is_empty());
    let p = plan("lo", 1, PinPolicy::Irq).unwrap();
    assert_eq!(p.workers.len(), 1);
    for c in p.workers.iter().chain([&p.master]) {
        let c = c.expect("pinned");
        assert!(allowed.contains(&c), "{c} not in {allowed:?}");
    }
    assert!(p.notes.iter().any(|n| n.contains("virtual")), "{:?}", p.notes);
}

#[test]
fn real_errors_and_pinning() {
    let e = plan("no-such-if0", 1, PinPolicy::Irq).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(plan("../x", 1, PinPolicy::Irq).is_err());
    let allowed = allowed_cpus().unwrap();
    let last = *allowed.last().unwrap();
    std::thread::spawn(move || {
        pin_current_thread(last).unwrap();
        assert_eq!(allowed_cpus().unwrap(), vec![last]);
        let e = pin_current_thread(60_000).unwrap_err();
        assert!(e.to_string().contains("CPU 60000"), "{e}");
        assert!(pin_current_thread(MAX_CPUS).unwrap_err().to_string().contains("CPU 65536"));
    })
    .join()
    .unwrap();
}
