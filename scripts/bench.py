#!/usr/bin/env python3
"""bench: the datapaths side by side on the testbed, in one run.

For each mode (xdp-native: native XDP on eth1 with VLAN 4000 matched in the program; xdp-generic: generic XDP
on eth1.4000; uring: io_uring sockets) it runs the server in the testbed's server namespace against the same
seeded canvas/1 load from both client namespaces:

  * a handshake phase (connections only, no writes): handshakes/s, server CPU per handshake, RSS per connection;
  * fixed offered loads (REPEATS times each; the tables show medians);
  * one ramp to saturation (connections arrive over the whole run while each writes every 20-50 ms; the
    per-second client CSVs give offered vs acknowledged writes);
  * overload: the knee (the largest of 2 x 250, 375, 500, 750, 1000 clients writing every 20-50 ms whose p99 stays
    within 3 ticks), then 1.5x, 2x and 4x its clients: p50/p99 write->visible and write->ACK, SYNCs and
    snapshots per client after the join, RSS per connection, server CPU per delivered broadcast datagram, the
    bytes clients receive per second, and the load generators' own CPU (a saturated loadgen is a limit of the
    box, not of the server); replicas: 250 full ones per namespace, the rest latency-only;
  * flood: load1 (2 x 250 clients arriving over 1 s, writing every 100-400 ms) without and with a handshake
    flood 3 s in (10,000 idle connections from client2 over 2 s, 10x load1's arrival rate): the share of their
    ACKed writes/s the established clients keep, and the flood's own connected/failed and loadgen CPU;
  * scale: 2 x 10,000 connections arriving over 40 s, each writing one pixel every 25-35 s (the r/place pace)
    for 90 s: connected/failed, RSS per connection, broadcast waves per second, p50/p99.

Measured per run: writes ingested/s (server's pixels_received over the write phase), server CPU per ingested
write and per datagram (user+sys of the server process from /proc/PID/stat over the run), softirq (box-wide,
/proc/stat, all CPUs), broadcast datagrams/s and bytes/s out, write->visible latency p50/p99 (both clients'
HDR histograms; p50 averaged, p99 the worse), kernel drops (UDP RcvbufErrors in the server and client
namespaces from /proc/net/snmp; AF_XDP kernel drops from the server's XDP_STATISTICS), RSS.

Softirq attribution: on the testbed every datagram is handled by one server-side and one client-side kernel
path of comparable cost (veth + bridge + veth), and both run in softirq on whichever CPU the frame arrived,
so per-process attribution is not possible; the report gives the box-wide softirq and a "server share" of
half of it, labelled as such. On real hardware the clients are other machines and all softirq on the server
box is the server's.

Output (in out/bench-DATE/): results.md (the side-by-side table and the ratios), results.csv (every run),
ramp.csv, and PNG plots. Usage: scripts/bench.py [--quick] [--repeats N] [--secs S] [--queues N] [--modes ...]
[--phases ...] (needs root; builds nothing: run `cargo build --release --workspace` first, as scripts/bench.sh
does). One quick offered load per mode: `--phases load1 --repeats 1`.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "target/release/server"
CLIENT = ROOT / "target/release/client"
TESTBED = ROOT / "scripts/testbed.sh"
TARGET = "https://10.0.1.10:4433"
# The server's default tick (--tick-ms); the knee is the largest load whose p99 stays within KNEE_TICKS of it.
TICK_MS = 100
KNEE_TICKS = 3
# Overload: clients per namespace tried for the knee, and the multiples of it run after.
KNEE_LADDER = [250, 375, 500, 750, 1000]
OVERLOAD_MULTIPLES = [1.5, 2, 4]
SAMPLED_REPLICAS = 250
# Handshake flood: load1's established clients (2 x 250 arriving over 1 s: 500 handshakes/s) plus, 3 s in, a
# third load generator whose FLOOD_CLIENTS connections arrive over FLOOD_JITTER_MS (10x that rate) and then
# idle; the figure is the established clients' acknowledged writes/s against the same run without it.
FLOOD_CLIENTS = 10000
FLOOD_JITTER_MS = 2000

MODES = {
    "xdp-native": ["--mode", "xdp", "--iface", "eth1", "--vlan", "4000", "--xdp-attach", "native"],
    "xdp-generic": ["--mode", "xdp", "--iface", "eth1.4000", "--xdp-attach", "generic"],
    "uring": ["--mode", "uring"],
}


def replicas_cell(r):
    """matching/checked, and of how many full replicas when some were never checked (no whole canvas)."""
    cell = f"{r['replicas_matching']}/{r['replicas_checked']}"
    total = r.get("replicas_total", r["replicas_checked"])
    return cell if r["replicas_checked"] >= total else f"{cell} of {total}"


def sh(args, timeout=120, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def softirq_ticks():
    with open("/proc/stat") as f:
        return int(f.readline().split()[7])


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]), int(rest[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def snmp_udp(ns):
    out = sh(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).stdout.splitlines()
    rows = [l.split() for l in out if l.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


class Bench:
    def __init__(self, a):
        self.a = a
        self.prefix = f"cvb{os.getpid()}"
        self.out = ROOT / "out" / time.strftime("bench-%Y%m%d-%H%M%S")
        self.out.mkdir(parents=True)
        self.rows = []
        self.ramp_rows = []

    def ns(self, host):
        return f"{self.prefix}-{host}"

    def up(self):
        sh([str(TESTBED), "up", "--prefix", self.prefix, "--queues", str(self.a.queues)], timeout=180)

    def down(self):
        sh([str(TESTBED), "down", "--prefix", self.prefix], timeout=120, check=False)

    def run(self, mode, phase, clients, jitter_ms, wait, secs, rep, replicas=None, tag=None, flood=None):
        tag = tag or f"{mode}-{phase}-{rep}"
        stats = self.out / f"{tag}-server.json"
        log = open(self.out / f"{tag}-server.log", "w")
        args = ["ip", "netns", "exec", self.ns("server"), str(SERVER), *MODES[mode], "-w", str(self.a.queues)]
        if mode == "xdp-generic":
            args = args[:-2]  # one queue on the VLAN device: -w defaults to it
        args += ["--listen", "10.0.1.10:4433", "--stats-json", str(stats), *self.a.server_arg]
        srv = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 30
            while "listening on" not in (self.out / f"{tag}-server.log").read_text():
                if srv.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{tag}: server did not start:\n" + (self.out / f"{tag}-server.log").read_text())
                time.sleep(0.1)
            rss0 = rss_kib(srv.pid)
            snmp0 = {h: snmp_udp(self.ns(h)) for h in ("server", "client1", "client2")}
            s0, (u0, k0), t0 = softirq_ticks(), proc_cpu_ticks(srv.pid), time.time()
            clis = []
            for h in ("client1", "client2"):
                mdir = self.out / f"{tag}-{h}"
                mdir.mkdir(exist_ok=True)
                cmd = ["ip", "netns", "exec", self.ns(h), str(CLIENT), "--target", TARGET, "--clients", str(clients),
                       "--id", h, "--protocol", "canvas1", "--seed", str(7 + rep), "--max-conn-jitter", str(jitter_ms),
                       "--min-pixel-wait", str(wait[0]), "--max-pixel-wait", str(wait[1]), "--duration", str(secs),
                       "--metrics-dir", str(mdir), "--summary-json", str(mdir / "summary.json"), "--threads", "1",
                       *self.a.client_arg]
                if replicas is not None:
                    cmd += ["--replicas", str(replicas), "--verify-timeout", "60"]
                clis.append(subprocess.Popen(cmd, stdout=open(mdir / "client.log", "w"), stderr=subprocess.STDOUT))
            flooder = None
            if flood:
                # The flood: FLOOD_CLIENTS idle connections from client2, 3 s into the write phase.
                time.sleep(3)
                fdir = self.out / f"{tag}-flood"
                fdir.mkdir(exist_ok=True)
                cmd = ["ip", "netns", "exec", self.ns("client2"), str(CLIENT), "--target", TARGET, "--clients",
                       str(flood[0]), "--id", "flood", "--protocol", "canvas1", "--seed", "99", "--max-conn-jitter",
                       str(flood[1]), "--min-pixel-wait", "1000000", "--max-pixel-wait", "1000000", "--duration",
                       str(max(secs - 4, 1)), "--replicas", "0", "--summary-json", str(fdir / "summary.json"),
                       "--verify-timeout", "10", "--endpoints", "64"]
                flooder = subprocess.Popen(cmd, stdout=open(fdir / "client.log", "w"), stderr=subprocess.STDOUT)
            # RSS at the end of the write phase (all connections up, before verification and close).
            time.sleep(max(secs - 0.5 - (3 if flood else 0), 0.5))
            rss1 = rss_kib(srv.pid)
            for c in clis + ([flooder] if flooder else []):
                c.wait(timeout=secs + 180)
            s1, (u1, k1), t1 = softirq_ticks(), proc_cpu_ticks(srv.pid), time.time()
            snmp1 = {h: snmp_udp(self.ns(h)) for h in ("server", "client1", "client2")}
        finally:
            srv.send_signal(2)
            srv.wait(timeout=60)
            log.close()
        st = json.load(open(stats))
        for h in ("client1", "client2"):
            if not (self.out / f"{tag}-{h}" / "summary.json").exists():
                log = (self.out / f"{tag}-{h}" / "client.log").read_text()[-2000:]
                raise RuntimeError(f"{tag}: the {h} load generator wrote no summary:\n{log}")
        sums = [json.load(open(self.out / f"{tag}-{h}" / "summary.json")) for h in ("client1", "client2")]
        tot = st["totals"]
        user, sys_ = (u1 - u0) / 100, (k1 - k0) / 100
        cpu = user + sys_
        sirq = (s1 - s0) / 100
        dgrams = tot["datagrams_in"] + tot["datagrams_out"]
        conns = sum(s["connected"] for s in sums)
        xdp_drops = 0
        for w in st["per_worker"]:
            x = w.get("xdp")
            if x:
                xs = x["stats"]
                xdp_drops += xs["kernel_rx_dropped"] + xs["kernel_rx_ring_full"]
        row = {
            "mode": mode, "phase": phase, "rep": rep, "clients": conns, "failed": sum(s["failed"] for s in sums),
            # Every full replica of a client that did not fail must have been checked and match: the loadgen
            # leaves out one that never received a whole canvas (its join still on the way at the end).
            "replicas_ok": all(s["replicas_matching"] == s["replicas_checked"]
                               and s["replicas_checked"] + s["failed"] >= s["replicas"] for s in sums),
            "secs": secs, "run_s": round(t1 - t0, 2),
            "writes_per_s": round(tot["pixels_received"] / secs, 1),
            "cpu_s": round(cpu, 2), "user_s": round(user, 2), "sys_s": round(sys_, 2), "softirq_box_s": round(sirq, 2),
            "cpu_us_per_write": round(cpu * 1e6 / max(tot["pixels_received"], 1), 1),
            "cpu_us_per_datagram": round(cpu * 1e6 / max(dgrams, 1), 2),
            "cpu_us_per_datagram_incl_half_softirq": round((cpu + sirq / 2) * 1e6 / max(dgrams, 1), 2),
            "accepted": tot["accepted"],
            "handshakes_per_s": round(tot["accepted"] / max(jitter_ms / 1000, 1), 1),
            "cpu_ms_per_handshake": round(cpu * 1e3 / max(tot["accepted"], 1), 3),
            "rss_kib_per_conn": round((rss1 - rss0) / max(conns, 1), 1),
            "bcast_dgrams_per_s": round(tot["broadcast_datagrams"] / secs, 1),
            "bytes_out_per_s": round(tot["bytes_out"] / secs),
            "p50_ms": round(statistics.mean(s["latency_ms"]["p50"] for s in sums), 1),
            "p99_ms": round(max(s["latency_ms"]["p99"] for s in sums), 1),
            "rcvbuf_errors": sum(snmp1[h]["RcvbufErrors"] - snmp0[h]["RcvbufErrors"] for h in snmp0),
            "xdp_drops": xdp_drops,
            "tripwire": (st.get("xdp") or {}).get("tripwire_packets", 0),
            "ack_p50_ms": round(statistics.mean(s["ack_latency_ms"]["p50"] for s in sums), 1),
            "ack_p99_ms": round(max(s["ack_latency_ms"]["p99"] for s in sums), 1),
            "syncs_per_client": round(sum(s["syncs"] for s in sums) / max(conns, 1), 3),
            # Every client installs one snapshot when it joins; the rest are repairs.
            "snapshots_after_join_per_client": round(sum(max(s["snapshots"] - s["connected"], 0) for s in sums) / max(conns, 1), 3),
            "cpu_us_per_bcast_datagram": round(cpu * 1e6 / max(tot["broadcast_datagrams"], 1), 2),
            "rx_mbit_per_s": round(sum(s["rx_bytes"] for s in sums) * 8 / 1e6 / max(t1 - t0, 1e-9), 1),
            "loadgen_cpu_pct": round(sum(s["usage"]["user_s"] + s["usage"]["sys_s"] for s in sums) * 100 / max(t1 - t0, 1e-9), 1),
            "waves_per_s": round(sum(w["endpoint"]["waves"] for w in st["per_worker"]) / max(len(st["per_worker"]), 1) / max(t1 - t0, 1e-9), 2),
            "acked_per_s": round(sum(s["pixels_applied"] for s in sums) / secs, 1),
            "replicas_checked": sum(s["replicas_checked"] for s in sums),
            "replicas_matching": sum(s["replicas_matching"] for s in sums),
            "replicas_total": sum(s["replicas"] for s in sums),
        }
        if flood:
            fs = json.load(open(self.out / f"{tag}-flood" / "summary.json"))
            row["flood_connected"] = fs["connected"]
            row["flood_failed"] = fs["failed"]
            row["flood_handshakes_per_s"] = round(fs["connected"] / (flood[1] / 1000), 1)
            row["flood_loadgen_cpu_pct"] = round((fs["usage"]["user_s"] + fs["usage"]["sys_s"]) * 100 / max(t1 - t0, 1e-9), 1)
        self.rows.append(row)
        print(f"  {tag}: {row['writes_per_s']} writes/s, {row['cpu_us_per_write']} us CPU/write, "
              f"{row['cpu_us_per_datagram']} us/datagram, p50 {row['p50_ms']} p99 {row['p99_ms']} ms, "
              f"{row['clients']} connected, {row['failed']} failed", flush=True)
        if phase == "ramp":
            for h in ("client1", "client2"):
                for f in sorted((self.out / f"{tag}-{h}").glob("*.csv")):
                    for r in csv.DictReader(open(f)):
                        self.ramp_rows.append({"mode": mode, "host": h, **r})
        return row


def overload(b, mode, secs):
    """The knee, then 1.5x, 2x and 4x its clients (writes every 20-50 ms); the rows go to b.rows."""
    knee = None  # (clients per namespace, row)
    for n in KNEE_LADDER:
        r = b.run(mode, "overload", n, 2000, (20, 50), secs, 0, SAMPLED_REPLICAS, tag=f"{mode}-knee-{n}")
        r["multiple"] = None
        if r["p99_ms"] > KNEE_TICKS * TICK_MS or r["failed"] or not r["replicas_ok"]:
            if knee is None:
                print(f"  {mode}: even {n} clients per namespace exceed p99 <= {KNEE_TICKS} ticks: the knee is "
                      "below the ladder; the multiples are taken of this first step", flush=True)
                knee = (n, r)
            break
        knee = (n, r)
    base, row = knee
    row["multiple"] = 1.0
    for m in OVERLOAD_MULTIPLES:
        r = b.run(mode, "overload", int(base * m), int(2000 * m), (20, 50), secs, 0, SAMPLED_REPLICAS,
                  tag=f"{mode}-overload-{m}x")
        r["multiple"] = m


def median_rows(rows):
    out = {}
    for r in rows:
        out.setdefault((r["mode"], r["phase"]), []).append(r)
    med = []
    for (mode, phase), rs in out.items():
        m = {"mode": mode, "phase": phase, "runs": len(rs)}
        for k, v in rs[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "rep":
                m[k] = statistics.median(r[k] for r in rs)
        m["failed"] = sum(r["failed"] for r in rs)
        m["replicas_ok"] = all(r["replicas_ok"] for r in rs)
        med.append(m)
    return med


def write_reports(b, phases, modes):
    with open(b.out / "results.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in b.rows for k in r))
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(b.rows)
    if b.ramp_rows:
        keys = sorted({k for r in b.ramp_rows for k in r})
        with open(b.out / "ramp.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(b.ramp_rows)
    med = median_rows([r for r in b.rows if r["phase"] not in ("overload", "flood")])
    cols = [("writes_per_s", "writes/s"), ("cpu_us_per_write", "CPU µs/write"), ("cpu_us_per_datagram", "CPU µs/dgram"),
            ("cpu_us_per_datagram_incl_half_softirq", "µs/dgram +½ softirq"), ("bcast_dgrams_per_s", "bcast dgrams/s"),
            ("bytes_out_per_s", "bytes/s out"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
            ("rcvbuf_errors", "RcvbufErrors"), ("xdp_drops", "XDP drops"), ("rss_kib_per_conn", "RSS KiB/conn")]
    lines = [f"# bench {b.out.name}", "",
             f"Machine: {machine()}. Testbed: veth + bridge in namespaces, {b.a.queues} server queue(s), AF_XDP in copy "
             f"mode (veth has no zero-copy). Medians of {b.a.repeats} runs per fixed load; canvas/1 from both client "
             "namespaces, seeded."]
    if any(m["phase"] not in ("handshake", "overload", "scale") for m in med):
        lines += ["", "| mode | phase | clients | " + " | ".join(c[1] for c in cols) + " | failed | replicas |",
                  "|---|---|---|" + "---|" * len(cols) + "---|---|"]
    for m in sorted(med, key=lambda m: (phases.index(m["phase"]), modes.index(m["mode"]))):
        if m["phase"] in ("handshake", "overload", "scale"):
            continue
        lines.append(f"| {m['mode']} | {m['phase']} | {m['clients']:.0f} | "
                     + " | ".join(f"{m[c[0]]:,.2f}".rstrip("0").rstrip(".") for c in cols)
                     + f" | {m['failed']} | {'all match' if m['replicas_ok'] else 'some behind' if m['phase'] == 'ramp' else 'MISMATCH'} |")
    hs = [m for m in med if m["phase"] == "handshake"]
    if hs:
        lines += ["", "Handshake phase (connections only, no writes):", "",
                  "| mode | connections | handshakes/s | server CPU ms/handshake | RSS KiB/connection |", "|---|---|---|---|---|"]
        for m in sorted(hs, key=lambda m: modes.index(m["mode"])):
            lines.append(f"| {m['mode']} | {m['accepted']:.0f} | {m['handshakes_per_s']:.0f} | {m['cpu_ms_per_handshake']:.3f} | {m['rss_kib_per_conn']:.1f} |")
    ov = [r for r in b.rows if r["phase"] == "overload"]
    if ov:
        lines += ["", f"Overload (clients writing every 20-50 ms; knee = the largest load of the ladder with p99 <= "
                  f"{KNEE_TICKS} ticks = {KNEE_TICKS * TICK_MS} ms; {SAMPLED_REPLICAS} full replicas per namespace):", "",
                  "| mode | × knee | clients | writes/s | p50 / p99 ms | ACK p50 / p99 ms | SYNCs/client | snapshots/client after join "
                  "| RSS KiB/conn | server CPU µs/bcast dgram | client rx Mbit/s | loadgen CPU % of a core | failed | replicas |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(ov, key=lambda r: (modes.index(r["mode"]), r["clients"])):
            mult = "-" if r.get("multiple") is None else f"{r['multiple']:g}"
            lines.append(f"| {r['mode']} | {mult} | {r['clients']} | {r['writes_per_s']:,.0f} | {r['p50_ms']:,.0f} / {r['p99_ms']:,.0f} | "
                         f"{r['ack_p50_ms']:,.0f} / {r['ack_p99_ms']:,.0f} | {r['syncs_per_client']:.3f} | "
                         f"{r['snapshots_after_join_per_client']:.3f} | {r['rss_kib_per_conn']:.0f} | {r['cpu_us_per_bcast_datagram']:.2f} | "
                         f"{r['rx_mbit_per_s']:,.0f} | {r['loadgen_cpu_pct']:.0f} | {r['failed']} | "
                         f"{replicas_cell(r)} |")
    sc = [r for r in b.rows if r["phase"] == "scale"]
    if sc:
        lines += ["", "Scale (connections arriving over 40 s, each writing one pixel every 25-35 s):", "",
                  "| mode | connected | failed | writes/s | broadcast waves/s per worker | p50 / p99 ms | RSS KiB/conn | loadgen CPU % | replicas |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sc:
            lines.append(f"| {r['mode']} | {r['clients']} | {r['failed']} | {r['writes_per_s']:,.0f} | {r['waves_per_s']:.2f} | "
                         f"{r['p50_ms']:,.0f} / {r['p99_ms']:,.0f} | {r['rss_kib_per_conn']:.0f} | {r['loadgen_cpu_pct']:.0f} | "
                         f"{replicas_cell(r)} |")
    fl = [r for r in b.rows if r["phase"] == "flood" and r.get("flooded")]
    if fl:
        lines += ["", f"Handshake flood (load1's 2 x 250 clients; 3 s in, {FLOOD_CLIENTS} idle connections arrive over "
                  f"{FLOOD_JITTER_MS} ms from client2, 10x load1's arrival rate):", "",
                  "| mode | ACKed writes/s without / with | kept | p99 ms without / with | flood connected | flood failed "
                  "| flood handshakes/s | flood loadgen CPU % | replicas |", "|---|---|---|---|---|---|---|---|---|"]
        bases = {r["mode"]: r for r in b.rows if r["phase"] == "flood" and not r.get("flooded")}
        for r in fl:
            z = bases[r["mode"]]
            lines.append(f"| {r['mode']} | {z['acked_per_s']:,.0f} / {r['acked_per_s']:,.0f} | {r['throughput_kept'] * 100:.1f} % | "
                         f"{z['p99_ms']:,.0f} / {r['p99_ms']:,.0f} | {r['flood_connected']} | {r['flood_failed']} | "
                         f"{r['flood_handshakes_per_s']:,.0f} | {r['flood_loadgen_cpu_pct']:.0f} | "
                         f"{replicas_cell(r)} |")
    if "uring" in modes and any(m["phase"].startswith("load") or m["phase"] == "ramp" for m in med):
        lines += ["", "Ratios to uring (same phase, medians; < 1 means cheaper / lower than uring):", "",
                  "| mode | phase | CPU/write | CPU/dgram | CPU/dgram +½ softirq | p99 |", "|---|---|---|---|---|---|"]
        base = {m["phase"]: m for m in med if m["mode"] == "uring"}
        for m in sorted(med, key=lambda m: (phases.index(m["phase"]), modes.index(m["mode"]))):
            if m["mode"] == "uring" or m["phase"] not in base or m["phase"] in ("handshake", "overload", "scale"):
                continue
            u = base[m["phase"]]
            r = lambda k: f"{m[k] / u[k]:.2f}" if u[k] else "-"
            lines.append(f"| {m['mode']} | {m['phase']} | {r('cpu_us_per_write')} | {r('cpu_us_per_datagram')} | "
                         f"{r('cpu_us_per_datagram_incl_half_softirq')} | {r('p99_ms')} |")
    lines += ["", "Softirq is box-wide (server and clients share this machine); \"+½ softirq\" charges the server half of "
              "it (each datagram crosses one server-side and one client-side kernel path of comparable cost here).",
              f"Command: `scripts/bench.sh{' --quick' if b.a.quick else ''}"
              f"{''.join(' --server-arg=' + x for x in b.a.server_arg)}"
              f"{''.join(' --client-arg=' + x for x in b.a.client_arg)}"
              f"{' --server-bin ' + str(SERVER) if b.a.server_bin else ''}`; files: {b.out}"]
    (b.out / "results.md").write_text("\n".join(lines) + "\n")
    plots(b, med, phases, modes)
    print("\n".join(lines))


def machine():
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} vCPU {cpu}, kernel {os.uname().release}"


def plots(b, med, phases, modes):
    try:
        import matplotlib
    except ImportError:
        print("bench: no PNG plots: matplotlib is missing (python3 -m pip install matplotlib; scripts/setup.sh "
              "installs it)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ov = [r for r in b.rows if r["phase"] == "overload" and r.get("multiple") is not None]
    if ov:
        fig, axs = plt.subplots(1, 3, figsize=(16, 4.5))
        for mode in modes:
            rs = sorted((r for r in ov if r["mode"] == mode), key=lambda r: r["multiple"])
            if not rs:
                continue
            x = [r["multiple"] for r in rs]
            axs[0].plot(x, [r["p99_ms"] for r in rs], marker="o", label=f"{mode} visible p99")
            axs[0].plot(x, [r["p50_ms"] for r in rs], marker=".", linestyle="--", label=f"{mode} visible p50")
            axs[1].plot(x, [r["ack_p99_ms"] for r in rs], marker="o", label=f"{mode} ACK p99")
            axs[2].plot(x, [r["rx_mbit_per_s"] for r in rs], marker="o", label=mode)
        for ax, (yl, title) in zip(axs, [("ms", "write→visible"), ("ms", "write→ACK"), ("Mbit/s", "bytes clients receive")]):
            ax.set_xlabel("× knee (clients)")
            ax.set_ylabel(yl)
            ax.set_title(f"overload: {title}")
            ax.legend(fontsize=8)
        axs[0].set_yscale("log")
        axs[1].set_yscale("log")
        fig.tight_layout()
        fig.savefig(b.out / "overload.png", dpi=110)
    fixed = [p for p in phases if p.startswith("load")]
    if not fixed:
        return
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (k, title) in zip(axs, [("cpu_us_per_datagram", "server CPU µs per datagram"),
                                    ("cpu_us_per_write", "server CPU µs per ingested write"), ("p99_ms", "write→visible p99 ms")]):
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            ys = [next((m[k] for m in med if m["mode"] == mode and m["phase"] == p), 0) for p in fixed]
            ax.bar([x + i * width for x in range(len(fixed))], ys, width, label=mode)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(fixed))])
        ax.set_xticklabels([f"{p}\n{next((m['writes_per_s'] for m in med if m['phase'] == p), 0):.0f} w/s" for p in fixed])
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(b.out / "fixed_loads.png", dpi=110)
    if b.ramp_rows:
        fig, axs = plt.subplots(1, 3, figsize=(16, 4.5))
        for mode in modes:
            per_t = {}
            for r in b.ramp_rows:
                if r["mode"] != mode:
                    continue
                d = per_t.setdefault(int(r["timestamp"]), {})
                d[r["host"]] = r
            # Seconds where both clients reported, from the first one on (the write phase and the close).
            ts = sorted(t for t, d in per_t.items() if len(d) == 2)
            if not ts:
                continue
            x = [t - ts[0] for t in ts]
            axs[0].plot(x, [sum(int(r["active"]) for r in per_t[t].values()) for t in ts], label=mode)
            axs[1].plot(x, [sum(int(r["tx_pps"]) for r in per_t[t].values()) for t in ts], label=mode)
            axs[2].plot(x, [max(float(r.get("lat_p99_ms") or 0) for r in per_t[t].values()) for t in ts], label=mode)
        for ax, (yl, title) in zip(axs, [("connections", "ramp: connections (arriving over the run)"),
                                         ("writes/s sent (each waits for the previous ack)", "ramp: write throughput"),
                                         ("write→visible p99 ms in that second", "ramp: latency")]):
            ax.set_xlabel("seconds")
            ax.set_ylabel(yl)
            ax.set_title(title)
            ax.legend(fontsize=8)
        axs[2].set_yscale("log")
        fig.tight_layout()
        fig.savefig(b.out / "ramp.png", dpi=110)


def positive(s):
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {s!r}")
    return n


def flood(b, mode, secs):
    """load1 without and with a 10x handshake flood; the ratio of the established clients' ACKed writes/s."""
    base = b.run(mode, "flood", 250, 1000, (100, 400), secs, 0, tag=f"{mode}-flood-base")
    base["flooded"] = False
    r = b.run(mode, "flood", 250, 1000, (100, 400), secs, 0, tag=f"{mode}-flood-on",
              flood=(FLOOD_CLIENTS, FLOOD_JITTER_MS))
    r["flooded"] = True
    r["throughput_kept"] = round(r["acked_per_s"] / max(base["acked_per_s"], 1e-9), 3)
    print(f"  {mode}: handshake flood ({r['flood_connected']} of {FLOOD_CLIENTS} connected over "
          f"{FLOOD_JITTER_MS} ms, {r['flood_failed']} failed, flood loadgen {r['flood_loadgen_cpu_pct']} % CPU): "
          f"established clients kept {r['throughput_kept'] * 100:.1f} % of their ACKed writes/s "
          f"({base['acked_per_s']} -> {r['acked_per_s']}), p99 {base['p99_ms']} -> {r['p99_ms']} ms", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repeat, shorter runs (a smoke run)")
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--secs", type=positive, default=10, help="write phase per fixed-load run")
    p.add_argument("--queues", type=positive, default=1, help="server NIC queues = workers (at most 256)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more server argument for every run (repeatable; e.g. --server-arg=--retry-above-rate "
                        "--server-arg=0), for an A/B of a flag")
    p.add_argument("--client-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every measuring client (not the flood's), repeatable; e.g. "
                        "--client-arg=--plain-snapshots")
    p.add_argument("--server-bin", type=Path, default=None, metavar="PATH",
                   help="another server binary (default target/release/server), for an A/B of two builds with the "
                        "same client")
    p.add_argument("--phases", nargs="+", default=["handshake", "load1", "load2", "load3", "ramp", "overload", "scale", "flood"],
                   choices=["handshake", "load1", "load2", "load3", "ramp", "overload", "scale", "flood"], help="which phases to run")
    a = p.parse_args()
    if a.server_bin is not None:
        global SERVER
        SERVER = a.server_bin.resolve()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, XDP)")
    for f in (SERVER, CLIENT):
        if not f.exists():
            sys.exit(f"bench: {f} missing: run `cargo build --release --workspace` (scripts/bench.sh does)")
    if a.quick:
        a.repeats, a.secs = 1, 5
    # (phase, clients per namespace, connection jitter ms, pixel wait ms, seconds)
    loads = [("handshake", 500 if a.quick else 1000, 3000, (10**6, 10**6), 4),
             ("load1", 250, 1000, (100, 400), a.secs),
             ("load2", 500, 1000, (50, 150), a.secs),
             ("load3", 500, 1000, (20, 50), a.secs),
             ("ramp", 1000 if a.quick else 1500, (a.secs + 10) * 1000, (20, 50), a.secs + 10),
             ("overload", 0, 0, (20, 50), a.secs),  # clients and jitter: see overload()
             ("scale", 2000 if a.quick else 10000, 40000, (25000, 35000), 45 if a.quick else 90),
             ("flood", 0, 0, (100, 400), max(a.secs, 10))]  # see flood()
    if a.quick:
        loads = [l for l in loads if l[0] != "load2"]
    loads = [l for l in loads if l[0] in a.phases]
    if not loads:
        p.error("no phase left to run (--quick drops load2)")
    phases = [l[0] for l in loads]
    b = Bench(a)
    t0 = time.time()
    try:
        b.up()
        for mode in a.modes:
            print(f"== {mode}", flush=True)
            for phase, clients, jitter, wait, secs in loads:
                if phase == "overload":
                    overload(b, mode, secs)
                    continue
                if phase == "flood":
                    flood(b, mode, secs)
                    continue
                reps = a.repeats if phase.startswith("load") else 1
                for rep in range(reps):
                    b.run(mode, phase, clients, jitter, wait, secs, rep, SAMPLED_REPLICAS if phase == "scale" else None)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        sys.exit(f"bench: {e}\n(the testbed is removed; the files so far are in {b.out})")
    finally:
        b.down()
    write_reports(b, phases, a.modes)
    print(f"bench: {len(b.rows)} runs in {time.time() - t0:.0f} s; {b.out}/results.md, results.csv, *.png")
    # The ramp is meant to reach saturation: failed connections and replicas that could not catch up within
    # the verification timeout there are results (in the table), not errors. Everywhere else they, or a
    # tripwire packet, mean the run is not valid.
    bad = [r for r in b.rows if r["tripwire"] or (r["phase"] != "ramp" and (r["failed"] or not r["replicas_ok"]))]
    if bad:
        sys.exit(f"bench: {len(bad)} run(s) had failed clients, replica mismatches or tripwire packets: see results.csv")


if __name__ == "__main__":
    main()
