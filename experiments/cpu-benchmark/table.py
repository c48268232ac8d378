"""The CPU results table over every task folder of experiments/cpu-benchmark/.

    experiments/unpack.sh cpu-benchmark    # first: the kept runs are packed in runs.tar.xz
    python3 experiments/cpu-benchmark/table.py [TASK_DIR ...] > experiments/cpu-benchmark/table.md

Reads each kept run (`TASK/runs/<method>__seed<k>/{config.toml,metrics.jsonl}`, as
experiments/run-grid.sh keeps them) and prints, per task and method: the success at the end of the
offline phase and at the end (mean ± std over seeds, and each seed), the mean wall time per run,
and MVP against QC at equal wall-clock time: each method's success by the time T at which the
faster of the two has finished (mean over seeds of the last evaluation logged within T seconds of
the run's start). Wall-clock figures compare only runs made under the same code and load (see
each task's README notes); the revision column is the checkout's at the run's start, as its
config.toml records it. Standard library only.
"""

import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent


def load_run(path):
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = (path / "config.toml").read_text()
    offline = int(re.search(r"^offline_steps = (\d+)", config, re.M).group(1))
    revision = re.search(r"git revision (\w+)", config)
    start = records[0]["wall_time"]
    evals = sorted((r["step"], r["eval/success"], r["wall_time"] - start) for r in records if "eval/success" in r)
    end = max(r["wall_time"] for r in records) - start
    fork = path / "fork.txt"
    return {
        "fork": fork.read_text().strip() if fork.exists() else None,
        "evals": evals,
        "offline": offline,
        "seconds": end,
        "revision": revision.group(1)[:7] if revision else "?",
    }


def stats(values):
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def success_at(run, step):
    found = [s for st, s, _ in run["evals"] if st == step]
    return found[0] if found else None


def success_by(run, seconds):
    within = [s for _, s, t in run["evals"] if t <= seconds]
    return within[-1] if within else 0.0


def task_table(task):
    groups = {}
    for run in sorted((task / "runs").glob("*__seed*")):
        method = run.name.rsplit("__seed", 1)[0]
        groups.setdefault(method, []).append(load_run(run))
    lines = [
        f"### {task.name}",
        "",
        "| method | seeds | end of offline phase | end | minutes per run | checkout revisions |",
        "|---|---|---|---|---|---|",
    ]
    order = ["mvp", "qc", "mvp-lambda0", "mvp-n1"]
    notes = []
    for method in sorted(groups, key=lambda m: order.index(m) if m in order else len(order)):
        runs = groups[method]
        offline = [v for v in (success_at(r, r["offline"]) for r in runs) if v is not None]
        final = [r["evals"][-1][1] for r in runs if r["evals"]]
        # A fork's run continues another's checkpoint in a later process: no wall time of its own.
        minutes = "–" if any(r["fork"] for r in runs) else f"{statistics.fmean(r['seconds'] for r in runs) / 60:.1f}"
        revisions = ", ".join(sorted({r["revision"] for r in runs}))
        lines.append(f"| {method} | {len(runs)} | {stats(offline)} | {stats(final)} | {minutes} | {revisions} |")
        forks = sorted({r["fork"].split("__seed")[0].removeprefix("continues ") for r in runs if r["fork"]})
        if forks:
            notes.append(f"{method} continues the {', '.join(forks)} runs from their checkpoints (same seeds), so its offline phase is theirs.")
    if "mvp" in groups and "qc" in groups:
        t = min(statistics.fmean(r["seconds"] for r in groups[m]) for m in ("mvp", "qc"))
        mvp = statistics.fmean(success_by(r, t) for r in groups["mvp"])
        qc = statistics.fmean(success_by(r, t) for r in groups["qc"])
        lines += ["", f"At equal wall-clock time ({t / 60:.1f} min, the faster method's mean run): MVP {mvp:.2f}, QC {qc:.2f}."]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def main(args):
    tasks = [pathlib.Path(a) for a in args] or sorted(p for p in ROOT.iterdir() if (p / "runs").is_dir())
    if not tasks:
        sys.exit("no TASK/runs/ folders here: run experiments/unpack.sh cpu-benchmark first")
    print("\n".join(task_table(t) for t in tasks))


if __name__ == "__main__":
    main(sys.argv[1:])
