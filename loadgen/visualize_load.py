#!/usr/bin/env python3
"""Merge the per-second CSVs of every `client` process into one PNG report.

    visualize_load.py METRICS_DIR -o report.png

Reads every `*.csv` in METRICS_DIR (one per load-generator process, named `{id}.csv`). Columns:
`timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps` (the predecessor's; enough on their own)
and optionally `acked,rejected,syncs,snapshots,lat_p50_ms,lat_p99_ms`.

Per second (unix timestamp), gauges and cumulative counters (active, failed) are summed over processes,
each carried forward over seconds it skipped within its own time range; rates (tx_pps, rx_dgram_s,
rx_mbps, and acked/rejected per second derived per process) are summed, a skipped second taking the
rate of the row after it; latency percentiles are the
maximum over processes (a conservative merge: exact percentiles of the union cannot be recovered from
per-process percentiles). Seconds in which no process reported are left as gaps.
"""

import argparse
import csv
import glob
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

GAUGES = ["active", "failed", "tx_pixels", "acked", "rejected", "syncs", "snapshots"]
RATES = ["tx_pps", "rx_dgram_s", "rx_mbps"]
LATENCIES = ["lat_p50_ms", "lat_p99_ms"]


def number(text):
    """A float, or NaN for an empty/invalid cell (e.g. a second without latency samples)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_csv(path):
    """{timestamp: {column: value}} of one process."""
    rows = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            ts = number(rec.get("timestamp"))
            if math.isnan(ts):
                continue
            rows[int(ts)] = {k: number(v) for k, v in rec.items() if k and k != "timestamp"}
    return rows


def derive_rates(rows, columns):
    """Add `{c}_per_s` to each row of one process: the per-second increase of cumulative column `c`."""
    stamps = sorted(rows)
    for a, b in zip(stamps, stamps[1:]):
        for c in columns:
            va, vb = rows[a].get(c, math.nan), rows[b].get(c, math.nan)
            if not (math.isnan(va) or math.isnan(vb)):
                rows[b][c + "_per_s"] = (vb - va) / (b - a)


def merge(per_process):
    """Merge processes into {column: [value per second]} over every second from the first to the last
    sample (NaN where no process has data, so plots show gaps instead of interpolating across them)."""
    for rows in per_process:
        derive_rates(rows, ["acked", "rejected"])
    first = min(min(rows) for rows in per_process if rows)
    last = max(max(rows) for rows in per_process if rows)
    stamps = list(range(first, last + 1))
    rates = RATES + ["acked_per_s", "rejected_per_s"]
    merged = {c: [] for c in GAUGES + rates + LATENCIES}
    present = {c: any(c in rec for rows in per_process for rec in rows.values()) for c in merged}
    # A process that skipped seconds (its reporter ran late) is filled in within its own range: gauges
    # carry the previous row forward; rates take the next row, which averages over the skipped seconds.
    carried, backfilled = [], []
    for rows in per_process:
        own = sorted(rows)
        inside = [ts for ts in stamps if own and own[0] <= ts <= own[-1]]
        fwd, prev = {}, None
        for ts in inside:
            prev = rows.get(ts, prev)
            fwd[ts] = prev
        back, nxt = {}, None
        for ts in reversed(inside):
            nxt = rows.get(ts, nxt)
            back[ts] = nxt
        carried.append(fwd)
        backfilled.append(back)

    def values(sources, ts, c):
        vals = (src[ts].get(c, math.nan) for src in sources if ts in src)
        return [v for v in vals if not math.isnan(v)]

    for ts in stamps:
        for c in GAUGES:
            vals = values(carried, ts, c)
            merged[c].append(sum(vals) if vals else math.nan)
        for c in rates:
            vals = values(backfilled, ts, c)
            merged[c].append(sum(vals) if vals else math.nan)
        for c in LATENCIES:
            vals = values(per_process, ts, c)
            merged[c].append(max(vals) if vals else math.nan)
    return [ts - first for ts in stamps], merged, present


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics_dir", help="directory holding the {id}.csv files of every client process")
    ap.add_argument("-o", "--output", default="report.png", help="PNG to write (default: report.png)")
    ap.add_argument("--title", default=None, help="report title")
    args = ap.parse_args()

    paths = sorted(glob.glob(os.path.join(args.metrics_dir, "*.csv")))
    if not paths:
        sys.exit(f"no *.csv in {args.metrics_dir}")
    per_process = [read_csv(p) for p in paths]
    if not any(per_process):
        sys.exit(f"no data rows in the CSVs of {args.metrics_dir}")
    t, m, present = merge(per_process)

    panels = [
        ("Active connections (sum)", [("active", m["active"])], "connections"),
        ("Failed connections (cumulative, sum)", [("failed", m["failed"])], "connections"),
        ("Pixels sent per second (sum)", [("tx pixels/s", m["tx_pps"])], "pixels/s"),
        ("Datagrams received per second (sum)", [("rx datagrams/s", m["rx_dgram_s"])], "datagrams/s"),
        ("Received datagram payload (sum)", [("rx Mbit/s", m["rx_mbps"])], "Mbit/s"),
    ]
    if present["lat_p50_ms"] or present["lat_p99_ms"]:
        panels.append(
            (
                "Write → visible latency (max over processes)",
                [("p50", m["lat_p50_ms"]), ("p99", m["lat_p99_ms"])],
                "ms",
            )
        )
    if present["acked"] or present["rejected"]:
        panels.append(
            (
                "Writes acked / rejected per second (sum)",
                [("acked/s", m["acked_per_s"]), ("rejected/s", m["rejected_per_s"])],
                "writes/s",
            )
        )
    if present["syncs"] or present["snapshots"]:
        panels.append(
            (
                "Replica repair (cumulative, sum)",
                [("syncs", m["syncs"]), ("snapshots", m["snapshots"])],
                "count",
            )
        )

    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.6 * rows), squeeze=False, sharex=True)
    for ax, (title, series, unit) in zip(axes.flat, panels):
        for label, ys in series:
            ax.plot(t, ys, label=label, linewidth=1.4)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds since first sample")
    peak = max((v for v in m["active"] if not math.isnan(v)), default=0)
    tx = [v for v in m["tx_pps"] if not math.isnan(v)]
    subtitle = (
        f"{len(paths)} process(es): {', '.join(os.path.splitext(os.path.basename(p))[0] for p in paths[:8])}"
        f"{' ...' if len(paths) > 8 else ''} | peak active {peak:.0f} | peak tx {max(tx, default=0):.0f} pixels/s"
    )
    fig.suptitle((args.title or "Canvas load test") + "\n" + subtitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output} ({len(t)} seconds, {len(paths)} CSV files)")


if __name__ == "__main__":
    main()
