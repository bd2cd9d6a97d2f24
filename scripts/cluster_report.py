#!/usr/bin/env python3
"""Judge and tabulate a `scripts/cluster.sh run`: OUT/cluster.json, one table on stdout.

  cluster_report.py OUT KILL KILLED     KILL: none|nats|server (the fault asked for); KILLED: what was killed

Passes when every live node reports the same canvas hash at the same stream position and every loadgen ended
with every client connected, 0 failed and every replica matching. Write->visible across nodes is not
measured yet (the loadgen observes its own node only): the field says so.
"""
import json
import os
import sys

SERVERS = [("server", "10.0.1.10"), ("server2", "10.0.1.11"), ("server3", "10.0.1.12")]
CLIENTS = ["client1", "client2", "client3"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    out, kill, killed = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
    nodes, errors = [], []
    for name, addr in SERVERS:
        m = load(os.path.join(out, f"{name}-metrics.json")) or {}
        st = load(os.path.join(out, f"{name}-stats.json")) or {}
        c = st.get("cluster") or {}
        nodes.append({
            "node": name, "addr": addr, "killed": name == killed,
            "canvas_hash": m.get("canvas_hash"), "cluster_seq": m.get("cluster_seq"),
            "pixels_applied": m.get("pixels_applied"), "connections_accepted": (st.get("totals") or {}).get("accepted"),
            "published": c.get("published"), "publish_failures": c.get("publish_failures"),
            "reader_restarts": c.get("reader_restarts"), "last_error": c.get("last_error"),
        })
    live = [n for n in nodes if not n["killed"]]
    states = {(n["canvas_hash"], n["cluster_seq"]) for n in live}
    identical = len(states) == 1 and None not in next(iter(states))
    if not identical:
        errors.append(f"live nodes differ: {sorted(map(str, states))}")
    loadgens = []
    for cli, (srv, addr) in zip(CLIENTS, SERVERS):
        s = load(os.path.join(out, f"{cli}.json"))
        if s is None:
            errors.append(f"{cli}: no summary (see {cli}.log)")
            loadgens.append({"loadgen": cli, "target": addr, "summary": None})
            continue
        rec = {"loadgen": cli, "target": addr}
        for k in ("clients", "connected", "failed", "replicas_checked", "replicas_matching", "pixels_sent",
                  "pixels_applied", "writes_unknown", "reconnects", "snapshots"):
            rec[k] = s.get(k)
        rec["ack_ms"] = s.get("ack_latency_ms")
        rec["visible_same_node_ms"] = s.get("latency_ms")
        rec["resumed"] = (s.get("sync_reasons") or {}).get("resume")
        loadgens.append(rec)
        if s.get("connected") != s.get("clients") or s.get("failed") != 0:
            errors.append(f"{cli}: connected {s.get('connected')}/{s.get('clients')}, failed {s.get('failed')}")
        if s.get("replicas_matching") != s.get("replicas_checked") or not s.get("replicas_checked"):
            errors.append(f"{cli}: replicas {s.get('replicas_matching')}/{s.get('replicas_checked')}")
    res = {
        "fault": kill, "killed": killed or None, "nodes": nodes, "identical_canvases": identical,
        "loadgens": loadgens,
        "cross_node_visible_ms": None,
        "cross_node_visible_note": "not measured yet: the loadgen sees its own node's broadcast only",
        "errors": errors, "pass": not errors,
    }
    with open(os.path.join(out, "cluster.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(f"fault: {kill}{' (' + killed + ' killed)' if killed else ''}")
    for n in nodes:
        print(f"  {n['node']:8} {n['addr']:10} {'KILLED' if n['killed'] else 'live':6} canvas {n['canvas_hash']} "
              f"at {n['cluster_seq']}, {n['pixels_applied']} writes applied, {n['published']} published")
    for g in loadgens:
        if g.get("connected") is None:
            print(f"  {g['loadgen']}: no summary")
            continue
        a = g["ack_ms"] or {}
        v = g["visible_same_node_ms"] or {}
        print(f"  {g['loadgen']} -> {g['target']}: {g['connected']}/{g['clients']} connected, {g['failed']} failed, "
              f"replicas {g['replicas_matching']}/{g['replicas_checked']}, {g['pixels_applied']}/{g['pixels_sent']} ACKed "
              f"({g['writes_unknown']} lost in flight), {g['reconnects']} reconnects, ACK p50/p99 {a.get('p50')}/{a.get('p99')} ms, "
              f"visible p50/p99 {v.get('p50')}/{v.get('p99')} ms")
    print("identical canvases on every live node" if identical else "CANVASES DIFFER")
    for e in errors:
        print(f"  error: {e}")
    print("PASS" if not errors else "FAIL")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
