#!/usr/bin/env python3
"""The MP1 comparison table from experiments/mp1/<task>/results.csv (written by run.sh):
final success (mean ± std over seeds) per task and method, the mean per difficulty group (MP1's
groups) and over all tasks, and the inference latency of latency_cpu.json.

    python3 experiments/mp1/table.py > experiments/mp1/table.md
"""

import csv
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["mp1", "mp1-no-dispersive", "flow", "diffusion"]
# MP1's (and DP3's) difficulty groups of the Meta-World tasks used here.
GROUPS = {
    "easy": ["button-press-topdown-v3", "door-open-v3", "drawer-open-v3", "reach-v3", "drawer-close-v3"],
    "medium": ["basketball-v3", "hammer-v3", "soccer-v3", "sweep-into-v3", "box-close-v3"],
    "hard": ["assembly-v3", "pick-place-v3", "push-v3", "hand-insert-v3"],
    "very hard": ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "pick-place-wall-v3"],
}


def group_of(task):
    return next((g for g, ts in GROUPS.items() if task in ts), "other")


def main():
    finals = {}  # task -> method -> [success per seed]
    for task in sorted(os.listdir(HERE)):
        path = os.path.join(HERE, task, "results.csv")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                finals.setdefault(task, {}).setdefault(row["group"], []).append(float(row["final_eval_success"]))
    fmt = lambda xs: f"{statistics.mean(xs):.2f} ± {statistics.pstdev(xs):.2f} ({len(xs)})" if xs else "—"  # noqa: E731
    print("| task | group | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for task in sorted(finals, key=lambda t: (list(GROUPS).index(group_of(t)) if group_of(t) in GROUPS else 9, t)):
        print(f"| {task} | {group_of(task)} | " + " | ".join(fmt(finals[task].get(m, [])) for m in METHODS) + " |")
    print()
    print("| mean over tasks (task means) | tasks | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for g in [*GROUPS, "all"]:
        tasks = [t for t in finals if g == "all" or group_of(t) == g]
        if not tasks:
            continue
        cells = []
        for m in METHODS:
            means = [statistics.mean(finals[t][m]) for t in tasks if finals[t].get(m)]
            cells.append(f"{statistics.mean(means):.3f}" if len(means) == len(tasks) else "—")
        print(f"| {g} | {len(tasks)} | " + " | ".join(cells) + " |")
    lat = os.path.join(HERE, "latency_cpu.json")
    if os.path.isfile(lat):
        rows = json.load(open(lat))
        rows = rows["rows"] if isinstance(rows, dict) else rows
        print()
        print("| method | engine | median ms per action (one observation, one thread) |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['engine']} | {r['median_ms']:.3f} |")


if __name__ == "__main__":
    main()
