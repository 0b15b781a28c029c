#!/usr/bin/env python3
"""Summarise the measurements bench/run.sh recorded: a table on stdout, optionally JSON.

Input: the tab-separated file run.sh writes, with lines
    meta  KEY  VALUE
    run   WORKLOAD  TARGET  REP  VALUE  IOS  CPU_SECONDS  WALL_SECONDS  EXTRA
where VALUE is IOPS (bits per second for the TCP baseline), empty when the run failed, and
EXTRA is "key=value,key=value" (the many-sessions runs put their RSS figures there).

Usage: report.py RESULTS.tsv [--json OUT.json]
"""

import json
import statistics
import sys
from collections import defaultdict

TARGETS = ("ferrite", "tgtd")
KIB = 1024
MIB = 1024 * 1024

# id -> (label, bytes per I/O or None for IOPS, unit shown)
WORKLOADS = [
    ("rr4k_ram", "4 KiB random read, QD32, RAM", None, "IOPS"),
    ("rr4k_file", "4 KiB random read, QD32, file", None, "IOPS"),
    ("sr128k_ram", "128 KiB seq. read, QD16, RAM", 128 * KIB, "MiB/s"),
    ("sr128k_file", "128 KiB seq. read, QD16, file", 128 * KIB, "MiB/s"),
    ("sw4k_ram", "4 KiB seq. write, QD32, RAM", None, "IOPS"),
    ("sw4k_file", "4 KiB seq. write, QD32, file", None, "IOPS"),
    ("sw128k_ram", "128 KiB seq. write, QD16, RAM", 128 * KIB, "MiB/s"),
    ("sw128k_file", "128 KiB seq. write, QD16, file", 128 * KIB, "MiB/s"),
]


def session_workload(wid):
    """('sessions64' -> 64) or None."""
    if wid.startswith("sessions") and wid[len("sessions"):].isdigit():
        return int(wid[len("sessions"):])
    return None


def is_numeric_key(key):
    return key in ("secs", "reps", "session_secs", "quick", "nproc") or key.endswith(
        ("_kib", "_count")
    ) or key.startswith("loadavg_")


def number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse(path):
    meta = {}
    runs = defaultdict(list)  # (workload, target) -> [run dict]
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[0] == "meta" and len(cols) >= 3:
                meta[cols[1]] = number(cols[2]) if is_numeric_key(cols[1]) else cols[2]
            elif cols[0] == "run" and len(cols) >= 9:
                _, wid, target, rep, value, ios, cpu, wall, extra = cols[:9]
                runs[(wid, target)].append(
                    {
                        "rep": int(rep),
                        "value": float(value) if value else None,
                        "ios": float(ios or 0),
                        "cpu_s": float(cpu or 0),
                        "wall_s": float(wall or 0),
                        "extra": dict(kv.split("=", 1) for kv in extra.split(",") if "=" in kv),
                    }
                )
    return meta, runs


def summary(samples, scale):
    """Median, mean, min and max of the successful samples, scaled to the unit shown."""
    vals = [r["value"] * scale for r in samples if r["value"] is not None]
    if not vals:
        return None
    return {
        "samples": [round(v, 1) for v in vals],
        "median": statistics.median(vals),
        "mean": statistics.fmean(vals),
        "min": min(vals),
        "max": max(vals),
        "failed_runs": sum(1 for r in samples if r["value"] is None),
    }


def cpu_per_mio(samples):
    """CPU seconds of the target per million I/Os, over all successful runs together."""
    ok = [r for r in samples if r["value"] is not None]
    ios = sum(r["ios"] for r in ok)
    return sum(r["cpu_s"] for r in ok) / ios * 1e6 if ios else None


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def build(meta, runs):
    rows = []
    ids = [(w, label, size, unit) for (w, label, size, unit) in WORKLOADS]
    for n in sorted({session_workload(w) for (w, _) in runs if session_workload(w)}):
        ids.append((f"sessions{n}", f"{n} sessions x QD1 4 KiB rand. read", None, "IOPS"))
    for wid, label, size, unit in ids:
        row = {"id": wid, "label": label, "unit": unit}
        present = False
        for t in TARGETS:
            samples = runs.get((wid, t), [])
            present |= bool(samples)
            s = summary(samples, size / MIB if size else 1.0)
            if s is not None:
                s["cpu_s_per_million_ios"] = cpu_per_mio(samples)
                s["runs"] = samples
                if session_workload(wid):
                    s.update(session_memory(samples))
            row[t] = s
        if not present:
            continue
        f, t = row.get("ferrite"), row.get("tgtd")
        row["ratio_of_medians"] = f["median"] / t["median"] if f and t and t["median"] else None
        rows.append(row)
    tcp = summary(runs.get(("tcp", "loopback"), []), 1 / 8 / MIB)
    return rows, tcp


def session_memory(samples):
    """RSS growth while the sessions were logged in (peak - before), in KiB, per run and per session."""
    growth, per_session = [], []
    for r in samples:
        e = r["extra"]
        try:
            before, peak, n = int(e["rss_before_kib"]), int(e["rss_peak_kib"]), int(e["sessions"])
        except (KeyError, ValueError):
            continue
        growth.append(peak - before)
        per_session.append((peak - before) / n)
    if not growth:
        return {}
    return {
        "rss_growth_kib": statistics.median(growth),
        "rss_per_session_kib": statistics.median(per_session),
        "sessions_ok": [int(r["extra"].get("sessions_ok", 0)) for r in samples],
    }


def print_table(meta, rows, tcp):
    secs, reps = meta.get("secs", "?"), meta.get("reps", "?")
    print()
    print(
        f"Ferrite vs tgtd on loopback: {reps} repeat(s) of {secs} s per workload and target, "
        f"alternating ferrite, tgtd; medians"
    )
    print(
        f"{meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), load average "
        f"{meta.get('loadavg_start', '?')} at the start and {meta.get('loadavg_end', '?')} at the end"
    )
    head = ["workload", "unit", "ferrite", "tgtd", "ferrite/tgtd", "ferrite CPU s/MIO", "tgtd CPU s/MIO"]
    table = [head]
    for r in rows:
        f, t = r.get("ferrite"), r.get("tgtd")
        table.append(
            [
                r["label"],
                r["unit"],
                fmt(f and f["median"]),
                fmt(t and t["median"]),
                fmt(r["ratio_of_medians"], 2),
                fmt(f and f["cpu_s_per_million_ios"], 1),
                fmt(t and t["cpu_s_per_million_ios"], 1),
            ]
        )
    if tcp:
        table.append(["loopback TCP, 1 stream (iperf3)", "MiB/s", fmt(tcp["median"]), "", "", "", ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        cells = [c.ljust(widths[0]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")

    def mib(k):
        return f"{k / 1024:,.1f} MiB" if isinstance(k, (int, float)) else "n/a"

    print()
    print(
        f"Ferrite RSS: {mib(meta.get('ferrite_rss_idle_kib'))} idle, "
        f"{mib(meta.get('ferrite_rss_filled_kib'))} once its 1 GiB RAM LUN is filled, "
        f"peak {mib(meta.get('ferrite_rss_peak_kib'))} (VmHWM; includes the RAM LUN)."
    )
    for r in rows:
        if not session_workload(r["id"]):
            continue
        parts = []
        for t in TARGETS:
            s = r.get(t)
            if s and "rss_growth_kib" in s:
                parts.append(
                    f"{t} {s['rss_growth_kib'] / 1024:+,.1f} MiB "
                    f"({s['rss_per_session_kib']:+,.0f} KiB/session)"
                )
        if parts:
            print(f"{r['id'][len('sessions'):]} sessions, RSS growth at peak: " + "; ".join(parts) + ".")
    print()
    print("Samples (each run, in order):")
    for r in rows:
        for t in TARGETS:
            s = r.get(t)
            if s:
                failed = f", {s['failed_runs']} failed" if s["failed_runs"] else ""
                print(
                    f"  {r['id']:<12} {t:<8} {' '.join(fmt(v) for v in s['samples'])} "
                    f"(mean {fmt(s['mean'])}{failed}) {r['unit']}"
                )
    if tcp:
        print(f"  {'tcp':<12} {'iperf3':<8} {' '.join(fmt(v) for v in tcp['samples'])} MiB/s")
    print()
    print(
        "Versions: ferrite "
        + meta.get("ferrite_commit", "?")
        + ", tgt "
        + meta.get("tgt", "?")
        + ", libiscsi "
        + meta.get("libiscsi", "?")
        + ", "
        + meta.get("qemu", "?")
        + f"; qemu-img bench counts: {meta.get('write4k_count', '?')} x 4 KiB, "
        + f"{meta.get('write128k_count', '?')} x 128 KiB."
    )


def main(argv):
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--json"):
        print(__doc__, file=sys.stderr)
        return 2
    meta, runs = parse(argv[1])
    rows, tcp = build(meta, runs)
    print_table(meta, rows, tcp)
    if len(argv) == 4:
        doc = {
            "schema": "ferrite-bench/1",
            "meta": meta,
            "workloads": rows,
            "tcp_baseline_mib_s": tcp,
        }
        with open(argv[3], "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
