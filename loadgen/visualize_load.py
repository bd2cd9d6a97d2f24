#!/usr/bin/env python3
"""Merge the per-second CSVs of every `client` process into one PNG report.

    visualize_load.py METRICS_DIR -o report.png [--summary PATH ...]

Reads every `*.csv` in METRICS_DIR (one per load-generator process, named `{id}.csv`). Columns:
`timestamp,active,failed,tx_pixels,tx_pps,rx_dgram_s,rx_mbps` (the predecessor's; enough on their own)
and optionally `acked,rejected,syncs,snapshots,lat_p50_ms,lat_p99_ms,hash_mismatches,ack_p50_ms,ack_p99_ms`.

End-of-run results come from the `--summary-json` files of the processes: given with `--summary` (files
or directories, repeatable), or else every `*.json` in METRICS_DIR that is a loadgen summary. They add
the replica verification panel (replicas matching / differing / unchecked per process, with hash
mismatches and syncs) and the whole-run latency percentiles as reference lines.

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
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

GAUGES = ["active", "failed", "tx_pixels", "acked", "rejected", "syncs", "snapshots", "hash_mismatches"]
RATES = ["tx_pps", "rx_dgram_s", "rx_mbps"]
LATENCIES = ["lat_p50_ms", "lat_p99_ms", "ack_p50_ms", "ack_p99_ms"]


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


def read_summaries(paths, metrics_dir):
    """The loadgen summaries (dicts) named by `paths` (files, or directories of `*.json`), by default the
    summaries among the `*.json` files of `metrics_dir`. A file named explicitly must be a summary."""
    files = []  # (path, named explicitly)
    for p in paths or [metrics_dir]:
        if os.path.isdir(p):
            files += [(f, False) for f in sorted(glob.glob(os.path.join(p, "*.json")))]
        else:
            files.append((p, True))
    summaries = []
    for f, named in files:
        try:
            with open(f) as fh:
                s = json.load(fh)
        except (OSError, ValueError) as e:
            if named:
                sys.exit(f"--summary {f}: {e}")
            continue
        if isinstance(s, dict) and "replicas_checked" in s:
            summaries.append(s)
        elif named:
            sys.exit(f"--summary {f}: not a loadgen --summary-json file")
    return summaries


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


def latency_references(ax, summaries):
    """Dashed lines at the whole-run p50/p99 of the summaries (the worst over processes), and a log scale
    when the per-second percentiles span more than a factor of 30 (a join ramp next to a steady state)."""
    lat = [x.get("latency_ms") or {} for x in summaries]
    lat = [v for v in lat if v.get("samples")]
    for key, style in (("p50", ":"), ("p99", "--")):
        vals = [v[key] for v in lat if isinstance(v.get(key), (int, float))]
        if vals:
            ax.axhline(max(vals), linestyle=style, color="grey", linewidth=1, label=f"whole run {key} {max(vals):.1f} ms")
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if isinstance(y, float) and y > 0]
    if ys and max(ys) / min(ys) > 30:
        ax.set_yscale("log")


def plot_replicas(ax, summaries):
    """Per process: replicas matching the server's canvas, differing, and not checked (disconnected or
    never whole), as stacked horizontal bars, each annotated with hash mismatches and syncs."""
    names, match, differ, unchecked, notes = [], [], [], [], []
    for x in summaries:
        checked, matching = x.get("replicas_checked", 0), x.get("replicas_matching", 0)
        replicas = max(x.get("replicas", checked), checked)
        names.append(f"{x.get('id', '?')} ({x.get('protocol', '?')})")
        match.append(matching)
        differ.append(checked - matching)
        unchecked.append(replicas - checked)
        verify = x.get("verify") or {}
        note = f"{matching}/{checked} match · {x.get('hash_mismatches', 0)} hash mismatches · {x.get('syncs', 0)} syncs"
        if verify.get("error") and verify.get("snapshot_tick") is None:
            note = f"canvas not fetched: {verify['error']}"[:70]
        elif verify.get("snapshot_hash_ok") is False:
            note += " · SNAPSHOT HASH WRONG"
        notes.append(note)
    y = list(range(len(names)))
    h = 0.6
    ax.barh(y, match, height=h, color="tab:green", label="matching")
    ax.barh(y, differ, height=h, left=match, color="tab:red", label="differing")
    left = [a + b for a, b in zip(match, differ)]
    ax.barh(y, unchecked, height=h, left=left, color="lightgrey", label="not checked")
    for i, note in enumerate(notes):
        ax.text(
            0.01,
            i,
            note,
            va="center",
            ha="left",
            fontsize=8,
            transform=ax.get_yaxis_transform(),
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5},
        )
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    # Top to bottom in file order, with a free strip at the bottom for the legend.
    ax.set_ylim(len(names) - 0.5 + 0.5, -0.5)
    ax.set_xlim(0, max([a + b for a, b in zip(left, unchecked)] + [1]))
    ax.set_xlabel("replicas (full-replica clients)")
    ax.legend(fontsize=8, loc="lower right", ncol=3)
    ax.grid(True, axis="x", alpha=0.3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics_dir", help="directory holding the {id}.csv files of every client process")
    ap.add_argument("-o", "--output", default="report.png", help="PNG to write (default: report.png)")
    ap.add_argument("--title", default=None, help="report title")
    ap.add_argument(
        "--summary",
        action="append",
        default=[],
        metavar="PATH",
        help="a client's --summary-json file, or a directory of them (repeatable; default: the *.json "
        "summaries in METRICS_DIR)",
    )
    args = ap.parse_args()

    paths = sorted(glob.glob(os.path.join(args.metrics_dir, "*.csv")))
    if not paths:
        sys.exit(f"no *.csv in {args.metrics_dir}")
    per_process = [read_csv(p) for p in paths]
    if not any(per_process):
        sys.exit(f"no data rows in the CSVs of {args.metrics_dir}")
    t, m, present = merge(per_process)
    summaries = read_summaries(args.summary, args.metrics_dir)

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
                "Write → visible latency per second (max over processes)",
                [("p50", m["lat_p50_ms"]), ("p99", m["lat_p99_ms"])],
                "ms",
            )
        )
    if present["ack_p50_ms"] or present["ack_p99_ms"]:
        panels.append(
            (
                "Write → ACK latency per second (max over processes)",
                [("p50", m["ack_p50_ms"]), ("p99", m["ack_p99_ms"])],
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
    if present["hash_mismatches"]:
        panels.append(
            (
                "Replica hash mismatches (cumulative, sum)",
                [("hash mismatches", m["hash_mismatches"])],
                "count",
            )
        )
    if summaries:
        panels.append(("Replicas at the end (summary JSON)", None, None))

    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.6 * rows), squeeze=False)
    time_axes = []
    for ax, (title, series, unit) in zip(axes.flat, panels):
        if series is None:
            plot_replicas(ax, summaries)
            ax.set_title(title, fontsize=10)
            continue
        if time_axes:
            ax.sharex(time_axes[0])
        time_axes.append(ax)
        for label, ys in series:
            ax.plot(t, ys, label=label, linewidth=1.4)
        if unit == "ms":
            latency_references(ax, summaries)
        else:
            # Counts and rates are never negative: start at zero (a hair below, so a line at zero stays
            # visible above the axis), and show a flat zero as one.
            finite = [v for _, ys in series for v in ys if not math.isnan(v)]
            if finite and min(finite) >= 0:
                top = ax.get_ylim()[1] if max(finite) > 0 else 1
                ax.set_ylim(-0.03 * top, top)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        if len(series) > 1 or (unit == "ms" and summaries):
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    # The time axes are shared: label the lowest one of each column.
    lowest = {}
    for i, ax in enumerate(axes.flat):
        if ax in time_axes:
            lowest[i % cols] = ax
    for ax in lowest.values():
        ax.set_xlabel("seconds since first sample")
    peak = max((v for v in m["active"] if not math.isnan(v)), default=0)
    tx = [v for v in m["tx_pps"] if not math.isnan(v)]
    subtitle = (
        f"{len(paths)} process(es): {', '.join(os.path.splitext(os.path.basename(p))[0] for p in paths[:8])}"
        f"{' ...' if len(paths) > 8 else ''} | peak active {peak:.0f} | peak tx {max(tx, default=0):.0f} pixels/s"
    )
    if summaries:
        checked = sum(x.get("replicas_checked", 0) for x in summaries)
        matching = sum(x.get("replicas_matching", 0) for x in summaries)
        subtitle += f" | replicas {matching}/{checked} match"
    fig.suptitle((args.title or "Canvas load test") + "\n" + subtitle, fontsize=11)
    # Keep the two-line title clear of the first row of panels.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    try:
        fig.savefig(args.output, dpi=110)
    except OSError as e:
        sys.exit(f"cannot write {args.output}: {e} (give -o a path in an existing, writable directory)")
    print(f"wrote {args.output} ({len(t)} seconds, {len(paths)} CSV files, {len(summaries)} summaries)")


if __name__ == "__main__":
    main()
