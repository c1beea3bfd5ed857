"""Resume start-up: what `tuneloop resume` imports before it drives the restored Tuner — the CLI,
the resume, sweep and report modules, the experiment loaded and the Tuner's trainable built — timed
in fresh interpreters, with its peak RSS and whether torch came with it.

Prints this source's figures and, with `--src DIR` (another checkout's `src`, e.g. an old commit's
from `git worktree add`), that one's, runs alternated, medians and the ratio.
Run: `.venv/bin/python benchmarks/resume_startup.py [--src DIR] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys, time
started = time.perf_counter()
import tuneloop.cli, tuneloop.sweep.resume, tuneloop.sweep.run, tuneloop.reporting.report
from tuneloop.config import load_experiment
from tuneloop.sweep.tuner import build_trainable
build_trainable(load_experiment(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started, "torch": "torch" in sys.modules,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(src: Path | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "experiments" / "digits_mlp.yaml")],
                          capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="also measure this tuneloop source directory")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    variants = {"this source": None, **({f"{args.src}": args.src} if args.src else {})}
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, src in variants.items():
            runs[name].append(measure(src))
    medians = {}
    for name, rows in runs.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        medians[name] = seconds
        shown = " ".join(f"{r['seconds']:.2f}" for r in rows)
        print(f"{name}: {seconds:.2f} s (runs: {shown}), "
              f"peak RSS {statistics.median(r['rss_mb'] for r in rows):.0f} MB, torch imported: {rows[0]['torch']}")
    if args.src:
        print(f"ratio this source / {args.src}: {medians['this source'] / medians[str(args.src)]:.2f}")


if __name__ == "__main__":
    main()
