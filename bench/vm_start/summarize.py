"""Prints the medians of bench/vm_start's ways and their ratios to the direct argv.

Usage: summarize.py RESULT.json   (vm_start_bench --benchmark_out=RESULT.json --benchmark_out_format=json)
"""
import json
import statistics
import sys

WAYS = {
    "BM_LibhciStartVm": "libhci kvm plugin (StartVm)",
    "BM_DirectArgv": "same argv, run directly",
    "BM_VirshStart": "virsh start (libvirt 9.0)",
}
BASELINE = "BM_DirectArgv"


def main(path):
    runs = json.load(open(path))["benchmarks"]
    samples, skipped = {}, {}
    for r in runs:
        way = r["run_name"].split("/")[0]
        if r.get("run_type") != "iteration":
            continue
        if r.get("error_occurred"):
            skipped[way] = r.get("error_message", "?")
            continue
        s = samples.setdefault(way, {"running": [], "marker": []})
        s["running"].append(r["to_running_ms"])
        s["marker"].append(r["to_marker_ms"])
    base = samples.get(BASELINE)
    print(f"\n{'way':<30} {'n':>3} {'to running':>12} {'ratio':>6} {'to marker':>12} {'ratio':>6}")
    for way, label in WAYS.items():
        if way not in samples:
            print(f"{label:<30}   -  not measured: {skipped.get(way, 'not run')}")
            continue
        s = samples[way]
        run_ms, mark_ms = statistics.median(s["running"]), statistics.median(s["marker"])
        r1 = f"{run_ms / statistics.median(base['running']):.2f}" if base else "-"
        r2 = f"{mark_ms / statistics.median(base['marker']):.2f}" if base else "-"
        print(f"{label:<30} {len(s['running']):>3} {run_ms:>9.0f} ms {r1:>6} "
              f"{mark_ms:>9.0f} ms {r2:>6}")
    print("\nmedians over the repetitions; ratio = way / the same argv run directly")
    # A way that could not run is a failed benchmark run, not a quiet gap in the table.
    return 1 if skipped or len(samples) != len(WAYS) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
