#!/usr/bin/env python3
"""Judge and tabulate a `scripts/cluster.sh run`: OUT/cluster.json, one table on stdout.

  cluster_report.py OUT KILL KILLED     KILL: none|nats|nats-leader|server (the fault asked for); KILLED: what was killed

Passes when every live node reports the same canvas hash at the same stream position, every loadgen ended
with every client connected, 0 failed and every replica matching, and every loadgen's observers on the other
live nodes (`client --observe`) matched their node and saw every ACKed write. Write->visible across nodes
is each loadgen's: from a write's send by its clients until an observer on another node reached the tick the
write's ACK named (one sample per write and observer); per loadgen, and the range over the loadgens.
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


def cross_range(loadgens):
    """The range over the loadgens of their cross-node p50, p99 and max (percentiles do not merge)."""
    ls = [g.get("visible_other_nodes_ms") for g in loadgens if g.get("visible_other_nodes_ms")]
    ls = [l for l in ls if l.get("samples")]
    if not ls:
        return None
    return {k: [min(l[k] for l in ls), max(l[k] for l in ls)] for k in ("p50", "p99", "max")} | {
        "samples": sum(l["samples"] for l in ls), "note": "[lowest, highest] over the loadgens"}


def roles(out, killed):
    """What the killed NATS server led when it died (from jsz-before-kill.json), or None."""
    j = load(os.path.join(out, "jsz-before-kill.json"))
    if not j:
        return None
    held = {"meta_leader": (j.get("meta_cluster") or {}).get("leader") == killed, "streams_led": [], "consumers_led": 0,
            "consumers": 0}
    for acc in j.get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            if (st.get("cluster") or {}).get("leader") == killed:
                held["streams_led"].append(st.get("name"))
            for c in st.get("consumer_detail") or []:
                held["consumers"] += 1
                held["consumers_led"] += (c.get("cluster") or {}).get("leader") == killed
    return held


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
            "reader_restarts": c.get("reader_restarts"), "direct_reads": c.get("direct_reads"),
            "last_error": c.get("last_error"),
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
        x = s.get("cross_node") or {}
        rec["visible_other_nodes_ms"] = x.get("latency_ms")
        rec["observers"] = {k: x.get(k) for k in ("observe", "connected", "failed", "replicas_matching", "not_seen")}
        loadgens.append(rec)
        # Observers of live nodes must match them and have seen every ACKed write.
        watched_live = sum(1 for o in (x.get("observe") or []) if not any(
            n["killed"] and o == f"https://{n['addr']}:4433" for n in nodes))
        if not x:
            errors.append(f"{cli}: no cross-node figures (client without --observe?)")
        elif x.get("replicas_matching") != watched_live or x.get("not_seen") != 0:
            errors.append(f"{cli}: observers matching {x.get('replicas_matching')}/{watched_live} live nodes, "
                          f"{x.get('not_seen')} ACKed writes not seen there")
        if s.get("connected") != s.get("clients") or s.get("failed") != 0:
            errors.append(f"{cli}: connected {s.get('connected')}/{s.get('clients')}, failed {s.get('failed')}")
        if s.get("replicas_matching") != s.get("replicas_checked") or not s.get("replicas_checked"):
            errors.append(f"{cli}: replicas {s.get('replicas_matching')}/{s.get('replicas_checked')}")
    res = {
        "fault": kill, "killed": killed or None, "killed_nats_roles": roles(out, killed) if kill.startswith("nats") else None,
        "nodes": nodes, "identical_canvases": identical,
        "loadgens": loadgens,
        "cross_node_visible_ms": cross_range(loadgens),
        "errors": errors, "pass": not errors,
    }
    with open(os.path.join(out, "cluster.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(f"fault: {kill}{' (' + killed + ' killed)' if killed else ''}"
          + (f"; it held {res['killed_nats_roles']}" if res["killed_nats_roles"] else ""))
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
        x = g.get("visible_other_nodes_ms") or {}
        o = g.get("observers") or {}
        print(f"      on the other nodes: p50/p99/max {x.get('p50')}/{x.get('p99')}/{x.get('max')} ms over {x.get('samples')} "
              f"samples; observers {o.get('connected')} connected, {o.get('failed')} failed, {o.get('replicas_matching')} matching, "
              f"{o.get('not_seen')} ACKed writes not seen")
    x = res["cross_node_visible_ms"]
    if x:
        print(f"write -> visible on another node: p50 {x['p50'][0]}-{x['p50'][1]} ms, p99 {x['p99'][0]}-{x['p99'][1]} ms "
              f"(range over the loadgens, {x['samples']} samples)")
    print("identical canvases on every live node" if identical else "CANVASES DIFFER")
    for e in errors:
        print(f"  error: {e}")
    print("PASS" if not errors else "FAIL")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
