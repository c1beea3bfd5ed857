"""Trainer overhead counted in instructions: `trainer_overhead.py`'s variants under valgrind's callgrind.

On a shared VM the clock's noise floor is about ±10% ((a') and (d') of trainer_overhead.py), wider
than the 5% the Trainer's targets ask about. Instructions are repeatable whatever else the machine
does: each variant runs in a valgrind process of its own, which counts only the timed training
(callgrind's instrumentation switched on where trainer_overhead.py starts its clock and off where
it reads it again, after an uncounted warm-up run of the same variant). Every thread counts, so the
background checkpoint writes of (e) are in; what the kernel does for them (the writes, the fsync)
is not.

Prints instructions per epoch and the ratio to the case's bare loop. Needs valgrind, its
callgrind.h and a C compiler (Debian: valgrind, gcc). Under valgrind the imports take minutes.
Run: `.venv/bin/python benchmarks/trainer_instructions.py [--epochs 10] [--variants a b c' d e e'] [--jobs 2]`
(about 45 min of CPU for all six on a 2-core VM, the default experiment's three most of it).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_overhead as bench  # noqa: E402  (the variants, as that script times them)

# start/stop callgrind's instrumentation from Python: its client requests are macros of callgrind.h
SWITCH = r"""
#include <valgrind/callgrind.h>
void tl_count_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void tl_count_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""
COUNTED = [name for name in bench.VARIANTS if name not in ("a'", "d'")]  # counts repeat: no noise floor to show


def run_variant(name: str, epochs: int, switch: str) -> None:
    """In the valgrind process: a warm-up run, then the counted run of variant `name`."""
    bench.torch.set_num_threads(1)
    run = bench.variant_runs(epochs)[name]
    run()  # warm-up, not counted
    library = ctypes.CDLL(switch)
    calls = iter([library.tl_count_start, library.tl_count_stop])

    def clock() -> float:  # trainer_overhead.py reads its clock where the timed part starts and ends
        next(calls)()
        return 0.0

    bench.clock = clock
    run()


def count(name: str, epochs: int, switch: str, directory: Path) -> int:
    out = directory / f"callgrind.{name.replace(chr(39), 'p')}"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                    sys.executable, __file__, "--child", name, "--epochs", str(epochs), "--switch", switch],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    match = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)  # ("summary:" counts from the start)
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the case-1 variants ((d), (e): the experiment's)")
    parser.add_argument("--variants", nargs="+", default=["a", "b", "c'", "d", "e", "e'"], choices=COUNTED)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="valgrind processes at once")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--switch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(args.child, args.epochs, args.switch)
        return
    wanted = list(dict.fromkeys([bench.base_of(v) for v in args.variants] + args.variants))
    with tempfile.TemporaryDirectory(prefix="tuneloop-instructions-") as scratch:
        directory = Path(scratch)
        (directory / "switch.c").write_text(SWITCH)
        switch = str(directory / "switch.so")
        subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", switch, str(directory / "switch.c")], check=True)
        with ThreadPoolExecutor(args.jobs) as pool:  # counts do not depend on the load: side by side
            counts = dict(zip(wanted, pool.map(lambda name: count(name, args.epochs, switch, directory), wanted)))
    experiment_epochs = bench.load_experiment(bench.EXPERIMENT).run.epochs
    print(f"callgrind instructions of the timed training only (after a warm-up run), 1 thread; case 1: "
          f"{args.epochs} epochs per run, case 2 ({bench.EXPERIMENT.name}): {experiment_epochs}")
    print(f"  {'variant':<36} {'M instructions/epoch':>20} {'ratio':>7}")
    for name in args.variants:
        base = bench.base_of(name)
        epochs = experiment_epochs if base == "d" else args.epochs
        print(f"  {bench.VARIANTS[name]:<36} {counts[name] / epochs / 1e6:20.2f} {counts[name] / counts[base]:7.4f}")
    print(f"  targets: {bench.TARGETS}   ((b), (c), (c') against (a); (e), (e') against (d))")


if __name__ == "__main__":
    main()
