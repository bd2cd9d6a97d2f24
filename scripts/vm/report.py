#!/usr/bin/env python3
"""Judge and tabulate the VM rig's cells (scripts/vm.sh).

  report.py suite RUNDIR            judge RUNDIR's cells, write RUNDIR/records.json, print the table;
                                    exit 0 when every cell passed
  report.py matrix OUT.json DIR...  join the suites' records.json (a suite without one is a failed record),
                                    write OUT.json, print the table; exit 0 when every cell passed

A cell passes when its server listened and exited 0 after SIGINT, the loadgen exited 0 with every client
connected, none failed and every replica matching a fresh snapshot, while the loadgen moves its sockets to
new ports every 3 s (--rebind-every: no connection may be re-established, every connection migrated, no
hand-off between workers dropped; the uring cell with the reuseport steering program loaded). In a guest the
uring cell instead runs over an impaired wire without rebinding (guest.sh: netem, 1 % loss and reordering
both ways; cells.sh says why) and needs netem to have dropped packets in both directions. In the AF_XDP cells on eth1 (xdp-native, v6) also: zero-copy on every queue on the newest kernel (trixie-backports) and on none with the server's note
on the older ones, the driver's per-queue counters (ethtool -S: rxQ_xdp_redirects, txQ_xdp_tx) equal to the
program's and the server's, and worker q on the CPU of queue q's IRQ effective affinity.
"""
import json
import os
import re
import sys

ZC_SUITES = {"trixie-backports"}  # virtio_net advertises AF_XDP zero-copy from 6.18.15 on (DESIGN.md)
ETH1_XDP_CELLS = {"xdp-native", "v6"}
MODES = {"xdp-native": "xdp native eth1 --vlan", "xdp-generic": "xdp generic eth1.4000",
         "uring": "uring", "v6": "xdp native eth1 --vlan [::]"}


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def read_json(path):
    s = read(path)
    if s is None:
        return None
    try:
        return json.loads(s)
    except ValueError:
        return None


def kv(path):
    out = {}
    for line in (read(path) or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def ethtool(path):
    out = {}
    for line in (read(path) or "").splitlines():
        m = re.match(r"\s*([A-Za-z0-9_]+):\s*(\d+)\s*$", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def driver_counters(d):
    """Per-queue deltas of virtio_net's XDP counters over the cell."""
    b, a = ethtool(os.path.join(d, "ethtool-before.txt")), ethtool(os.path.join(d, "ethtool-after.txt"))
    res = {"rx_xdp_redirects": [], "tx_xdp_tx": []}
    # virtio_net: rxQ_xdp_redirects / txQ_xdp_tx (6.12+), rx_queue_Q_xdp_redirects / tx_queue_Q_xdp_tx (6.1);
    # veth (the host row): rx_queue_Q_xdp_redirect (its xdp_tx counts XDP_TX, not AF_XDP: never compared)
    for rx, tx in (("rx{}_xdp_redirects", "tx{}_xdp_tx"), ("rx_queue_{}_xdp_redirects", "tx_queue_{}_xdp_tx"),
                   ("rx_queue_{}_xdp_redirect", "no_such_counter_{}")):
        q = 0
        while rx.format(q) in a:
            res["rx_xdp_redirects"].append(a[rx.format(q)] - b.get(rx.format(q), 0))
            res["tx_xdp_tx"].append(a.get(tx.format(q), 0) - b.get(tx.format(q), 0))
            q += 1
        if q:
            break
    return res


def irq_affinity(d):
    """IRQ number -> effective affinity list (from irq-affinity.txt: name irq list)."""
    out = {}
    for line in (read(os.path.join(d, "irq-affinity.txt")) or "").splitlines():
        p = line.split()
        if len(p) == 3:
            out[int(p[1])] = p[2]
    return out


def irq_smp(d, name):
    """IRQ name -> smp_affinity_list, from a guest.sh irq_smp file (name irq list)."""
    out = {}
    for line in (read(os.path.join(d, name)) or "").splitlines():
        p = line.split()
        if len(p) == 3:
            out[p[0]] = p[2]
    return out


def netem(path):
    """guest.sh's netem.txt -> {spec, egress: {sent, dropped}, ingress: {sent, dropped}}, or None."""
    text = read(path)
    if text is None:
        return None
    out = {"spec": None, "egress": None, "ingress": None}
    part, in_netem = None, False
    for line in text.splitlines():
        if line.startswith("spec: "):
            out["spec"] = line[6:].strip()
        elif line.startswith("== "):
            part, in_netem = ("egress" if "egress" in line else "ingress"), False
        elif line.startswith("qdisc "):
            in_netem = line.startswith("qdisc netem ")
        elif part and in_netem and out[part] is None:
            m = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", line)
            if m:
                out[part] = {"sent": int(m.group(1)), "dropped": int(m.group(2))}
    return out


def judge(rundir, info, cell, clients):
    d = os.path.join(rundir, f"cell-{cell}")
    suite = info.get("suite", "?")
    rec = {
        "suite": suite, "kernel_package": info.get("kernel_package"), "kernel": read(os.path.join(rundir, "uname"), "").strip() or None,
        "kernel_note": info.get("kernel_note") or None,
        "cell": cell, "mode": MODES[cell], "server": info.get("commit"), "server_sha256": info.get("server_sha256"),
        "zero_copy": None, "zero_copy_queues": None, "zero_copy_note": None,
        "clients": clients, "connected": None, "failed": None, "replicas_checked": None, "replicas_matching": None,
        "pixels_sent": None, "server_exit": None, "client_exit": None,
        "driver_counters": None, "program_counters": None, "server_counters": None, "counters_match": None,
        "pinning": None, "pinning_ok": None, "pin_irqs": None, "seconds": None, "error": None, "pass": False,
    }
    errors = []
    failed_start = read(os.path.join(rundir, f"{cell}.failed"))
    if not os.path.isdir(d):
        rec["error"] = "cell not run (the guest did not get to it; see console.log / guest.log)"
        return rec
    hs = read(os.path.join(d, "host_seconds"))
    rec["seconds"] = float(hs) if hs else None
    err_text = read(os.path.join(d, "server.err"), "")
    notes = [l.strip() for l in err_text.splitlines() if re.search(r"zero.copy|copy mode", l, re.I)]
    rec["zero_copy_note"] = " | ".join(notes) or None
    if failed_start is not None:
        errors.append("server did not start: " + " ".join(failed_start.split()))
    rc = read(os.path.join(d, "server.rc"))
    rec["server_exit"] = int(rc) if rc and rc.strip().lstrip("-").isdigit() else None
    crc = read(os.path.join(d, "client.rc"))
    rec["client_exit"] = int(crc) if crc and crc.strip().lstrip("-").isdigit() else None
    s = read_json(os.path.join(d, "summary.json"))
    st = read_json(os.path.join(d, "stats.json"))
    if failed_start is None:
        if s is None:
            errors.append("no loadgen summary (client exit %s; see client.out)" % rec["client_exit"])
        else:
            for k in ("connected", "failed", "replicas_checked", "replicas_matching", "pixels_sent"):
                rec[k] = s.get(k)
            if s.get("connected") != clients:
                errors.append(f"connected {s.get('connected')} of {clients}")
            if s.get("failed") != 0:
                errors.append(f"failed {s.get('failed')} (first error: {s.get('first_error')})")
            if s.get("replicas_checked") != clients or s.get("replicas_matching") != clients:
                errors.append(f"replicas matching {s.get('replicas_matching')}/{s.get('replicas_checked')} of {clients}")
            rec["rebinds"] = s.get("rebinds")
            if s.get("reconnects"):
                errors.append(f"{s.get('reconnects')} connections re-established (a rebinding lost them)")
        if rec["client_exit"] != 0:
            errors.append(f"client exit {rec['client_exit']}")
        if rec["server_exit"] != 0:
            errors.append(f"server exit {rec['server_exit']} after SIGINT")
        if st is None:
            errors.append("no --stats-json from the server")
    if st is not None:
        rec["kernel"] = st.get("kernel") or rec["kernel"]
        pw = st.get("per_worker") or []
        rec["server_counters"] = {
            "rx_datagrams": [w.get("backend", {}).get("rx_datagrams") for w in pw],
            "tx_datagrams": [w.get("backend", {}).get("tx_datagrams") for w in pw],
            "accepted": st.get("totals", {}).get("accepted"),
        }
        ep = lambda k: sum(w.get("endpoint", {}).get(k, 0) for w in pw)
        rec["migrations"], rec["handed_off"] = ep("migrations"), ep("handed_off")
        if s is not None and s.get("rebinds") and rec["migrations"] < clients:
            errors.append(f"{s.get('rebinds')} loadgen rebinds but only {rec['migrations']} migrations seen for {clients} clients")
        if ep("handoff_dropped"):
            errors.append(f"{ep('handoff_dropped')} hand-offs between workers dropped")
        if cell == "uring":
            rec["steering"] = st.get("steering")
            if (st.get("steering") or {}).get("mode") != "cid":
                errors.append(f"the reuseport steering program did not load: {st.get('steering')}")
            if suite != "host":
                rec["netem"] = ne = netem(os.path.join(d, "netem.txt"))
                for way in ("egress", "ingress"):
                    got = (ne or {}).get(way)
                    if not got or not got["dropped"]:
                        errors.append(f"netem {way}: no packets dropped ({got}; see netem-setup.txt)")
        x = st.get("xdp")
        if x is not None:
            # per_worker[].xdp.zero_copy (also accepted: xdp.workers[].zero_copy)
            zc = [w["xdp"].get("zero_copy") for w in pw if w.get("xdp")]
            if not zc:
                zc = [w.get("zero_copy") for w in x.get("workers", [])]
            rec["zero_copy_queues"] = zc
            rec["zero_copy"] = (all(zc) if zc and all(v is not None for v in zc) and len(set(zc)) == 1
                                else ("mixed" if zc else None))
            rec["program_counters"] = {k: x.get("counters", {}).get(k) for k in ("redirected", "redirect_failed", "passed_not_ip", "passed_not_udp")}
            rec["program_counters"]["tripwire_packets"] = x.get("tripwire_packets")
            if x.get("tripwire_packets"):
                errors.append(f"{x['tripwire_packets']} datagram(s) bypassed AF_XDP (tripwire)")
            if x.get("counters", {}).get("redirect_failed"):
                errors.append(f"redirect_failed {x['counters']['redirect_failed']}")
    if cell in ETH1_XDP_CELLS and st is not None and st.get("xdp") is not None:
        want_zc = suite in ZC_SUITES
        if want_zc and rec["zero_copy"] is not True:
            errors.append(f"zero-copy expected on every queue on {suite}, got {rec['zero_copy_queues']}")
        if not want_zc:
            if rec["zero_copy"] is not False:
                errors.append(f"zero-copy not expected on {suite}, got {rec['zero_copy_queues']}")
            elif not re.search(r"zero-copy refused|no AF_XDP zero-copy", rec["zero_copy_note"] or ""):
                errors.append("copy mode without the server's note on why zero-copy was refused")
        # Driver vs program vs server.
        dc = driver_counters(d)
        rec["driver_counters"] = dc
        pw = st.get("per_worker") or []
        rx_srv = []
        for w in pw:
            k = w.get("xdp", {}).get("stats", {})
            rx_srv.append(w.get("backend", {}).get("rx_datagrams", 0) + w.get("backend", {}).get("rx_dropped", 0)
                          + k.get("kernel_rx_dropped", 0) + k.get("kernel_rx_ring_full", 0))
        tx_srv = [w.get("backend", {}).get("tx_datagrams", 0) for w in pw]
        checks = []
        red = (st["xdp"].get("counters") or {}).get("redirected")
        checks.append(("driver rx_xdp_redirects total == program redirected", sum(dc["rx_xdp_redirects"]), red))
        checks.append(("driver rxQ_xdp_redirects == worker q's received + dropped", dc["rx_xdp_redirects"], rx_srv))
        if rec["zero_copy"] is True:
            checks.append(("driver txQ_xdp_tx == worker q's tx_datagrams (zero-copy)", dc["tx_xdp_tx"], tx_srv))
        bad = [f"{n}: {a} != {b}" for n, a, b in checks if a != b]
        rec["counters_match"] = not bad and bool(dc["rx_xdp_redirects"])
        if not dc["rx_xdp_redirects"]:
            errors.append("no rxQ_xdp_redirects in ethtool -S eth1")
        errors.extend("counters: " + b for b in bad)
        if suite == "host":
            # veth: no IRQs to pin to (the server's fallback rule applies, tested by datapath/src/pin/tests.rs).
            rec["error"] = "; ".join(errors) or None
            rec["pass"] = not errors
            return rec
        # Pinning: worker q's CPU == the CPU of queue q's IRQ effective affinity.
        aff = irq_affinity(d)
        irqs = (st.get("pin") or {}).get("queue_irqs") or []
        pins, ok = [], True
        for q, w in enumerate(pw):
            irq = irqs[q] if q < len(irqs) else None
            eff = aff.get(irq) if irq is not None else None
            good = irq is not None and eff is not None and w.get("cpu") is not None and eff == str(w.get("cpu"))
            pins.append({"queue": q, "worker_cpu": w.get("cpu"), "irq": irq, "irq_effective_affinity": eff, "ok": good})
            ok = ok and good
        # The IRQs did not start where the index rule would put workers (guest.sh): xdp-native gathered them
        # on CPU 0 and pin_irqs.sh must have spread them; v6 crossed them, so the workers must be crossed too.
        if cell == "xdp-native":
            before = irq_smp(d, "irq-before-pin_irqs.txt")
            after = irq_smp(d, "irq-after-pin_irqs.txt")
            spread = len(after) == 2 and len(set(after.values())) == 2 and set(before.values()) == {"0"}
            rec["pin_irqs"] = {"before": before, "after": after, "spread": spread}
            if not spread:
                errors.append(f"pin_irqs.sh did not spread the queue IRQs gathered on CPU 0: {before} -> {after}")
                ok = False
        if cell == "v6":
            crossed = [p["worker_cpu"] for p in pins] == [1, 0]
            rec["pin_irqs"] = {"crossed": irq_smp(d, "irq-crossed.txt"), "workers_crossed": crossed}
            if not crossed:
                errors.append("queue IRQs crossed (0 -> CPU 1, 1 -> CPU 0) but the workers did not follow")
                ok = False
        rec["pinning"] = pins
        rec["pinning_ok"] = ok and bool(pins)
        if not rec["pinning_ok"]:
            errors.append(f"pinning: {pins}")
    rec["error"] = "; ".join(errors) or None
    rec["pass"] = not errors
    return rec


def suite_records(rundir):
    info = kv(os.path.join(rundir, "run.info"))
    params = kv(os.path.join(rundir, "params"))
    cells = params.get("CELLS", "").strip("'\"").replace("\\ ", " ").split()
    clients = int(params.get("CLIENTS", "0") or 0)
    recs = [judge(rundir, info, c, clients) for c in cells]
    setup_failed = read(os.path.join(rundir, "setup.failed"))
    if setup_failed is not None or not os.path.exists(os.path.join(rundir, "setup.done")):
        why = setup_failed.strip() if setup_failed else "the guest did not come up (see console.log)"
        for r in recs:
            r["error"] = "guest setup failed: " + why
            r["pass"] = False
    boot = read(os.path.join(rundir, "boot_seconds"))
    for r in recs:
        r["boot_seconds"] = float(boot) if boot else None
        r["rundir"] = rundir
    return recs


def table(recs):
    hdr = ["suite", "kernel", "cell", "zc", "conn", "fail", "replicas", "counters", "pin", "s", "result"]
    rows = []
    for r in recs:
        fmt = lambda v: "-" if v is None else ("yes" if v is True else ("no" if v is False else str(v)))
        rows.append([r["suite"], r["kernel"] or "-", r["cell"], fmt(r["zero_copy"]), fmt(r["connected"]),
                     fmt(r["failed"]),
                     "-" if r["replicas_checked"] is None else f"{r['replicas_matching']}/{r['replicas_checked']}",
                     fmt(r["counters_match"]), fmt(r["pinning_ok"]),
                     "-" if r.get("seconds") is None else f"{r['seconds']:.0f}",
                     "PASS" if r["pass"] else "FAIL"])
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    out = ["  ".join(str(c).ljust(n) for c, n in zip(hdr, w))]
    out += ["  ".join(str(c).ljust(n) for c, n in zip(row, w)) for row in rows]
    for r in recs:
        if r["error"]:
            out.append(f"  {r['suite']}/{r['cell']}: {r['error']}")
    return "\n".join(out)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "suite":
        rundir = sys.argv[2]
        recs = suite_records(rundir)
        with open(os.path.join(rundir, "records.json"), "w") as f:
            json.dump(recs, f, indent=2)
        print(table(recs))
        return 0 if recs and all(r["pass"] for r in recs) else 1
    if len(sys.argv) >= 3 and sys.argv[1] == "matrix":
        recs = []
        for d in sys.argv[3:]:
            got = read_json(os.path.join(d, "records.json"))
            if not got:
                suite = os.path.basename(d.rstrip("/"))
                recs.append({"suite": suite, "kernel": None, "cell": "-", "mode": None, "zero_copy": None,
                             "connected": None, "failed": None, "replicas_checked": None,
                             "replicas_matching": None, "counters_match": None, "pinning_ok": None,
                             "error": f"no records in {d} (the suite did not run; see its output)", "pass": False})
            else:
                recs.extend(got)
        with open(sys.argv[2], "w") as f:
            json.dump(recs, f, indent=2)
        print(table(recs))
        return 0 if recs and all(r["pass"] for r in recs) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
