"""A shipped example experiment end to end through the real `tuneloop` command (used by
tests/recipes): validate, train, Ctrl-C and `train --resume` against an uninterrupted run, and a
small sweep interrupted and resumed to its end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna

from tl_sweeps import interrupt_after, resume_here, study_of, trial_rows

REPO = Path(__file__).resolve().parents[2]


def tuneloop(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """The console script, one intra-op thread (as a trial of one CPU), tests/support on PYTHONPATH."""
    return subprocess.run([str(Path(sys.executable).with_name("tuneloop")), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def sets(overrides: dict[str, str]) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def check_validate(experiment: Path, capsys, *fragments: str) -> None:
    """`tuneloop validate` in this process (the command's code, without a second interpreter's start-up)."""
    from tuneloop import cli

    assert cli.main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out, out
    for fragment in fragments:
        assert fragment in out, out


def check_train_and_resume(experiment: Path, tmp_path: Path, capsys, overrides: dict[str, str], *, epochs: int,
                           interrupt_at: int, better_than: float) -> list[dict[str, str]]:
    """An uninterrupted `tuneloop train` of `epochs` epochs, and the same run Ctrl-C'd at the end of
    epoch index `interrupt_at` (a process of its own, which the SIGINT reaches as a Ctrl-C would) and
    continued with `tuneloop train --resume`: both exit as they
    should, the resumed run's metrics.csv is the uninterrupted one's byte for byte (the data order,
    random augmentation and dropout repeat), and the last val_accuracy beats `better_than`.
    Returns the uninterrupted run's metrics.csv rows."""
    from tuneloop import cli

    args = sets({**overrides, "run.epochs": str(epochs)})
    straight = tmp_path / "straight"  # in this process (one intra-op thread, as the Ctrl-C'd subprocess below)
    assert cli.main(["train", str(experiment), *args, "--device", "cpu", "--output", str(straight)]) == 0
    rows = metrics_rows(straight)
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))
    assert float(rows[-1]["val_accuracy"]) > better_than, rows
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), rows

    resumed = tmp_path / "resumed"
    callback = (f"[{{class: tl_train_faults.InterruptAfterEpoch, epoch: {interrupt_at}, "
                f"marker: '{tmp_path / 'sigint'}'}}]")
    proc = tuneloop(["train", str(experiment), *args, "--set", f"run.callbacks={callback}", "--device", "cpu",
                     "--output", str(resumed)], tmp_path)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "tuneloop train --resume" in proc.stdout, proc.stdout
    assert len(metrics_rows(resumed)) == interrupt_at + 1
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(resumed)]) == 0  # in this process, as the uninterrupted run
    assert f"epoch {epochs}/{epochs}" in capsys.readouterr().out
    assert (resumed / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["epochs_trained"] == epochs and summary["stop_reason"] is None
    return rows


def check_interrupted_sweep(experiment: Path, tmp_path: Path, ray_tmp: str, shared_ray, capsys,
                            overrides: dict[str, str], *, name: str, trials: int, epochs: int,
                            interrupt_after_epochs: int, better_than: float) -> Path:
    """`tuneloop sweep` of `trials` trials of at most `epochs` epochs, one at a time, Ctrl-C'd once
    `interrupt_after_epochs` epochs were trained, then `tuneloop resume`d to its end: every trial
    complete or pruned in results.csv and in the Optuna study, each trial's epochs reported once and
    in order, and the best final val_accuracy beats `better_than`. Returns the experiment directory.
    (The resume runs in this process, on the tests' shared Ray: `tl_sweeps.resume_here`.)"""
    log = tmp_path / "epochs.jsonl"
    storage = tmp_path / "results"
    args = sets({**overrides, "run.epochs": str(epochs), "sweep.num_samples": str(trials),
                 "sweep.max_concurrent_trials": "1",  # one Ray worker importing the recipe's model, not two
                 "sweep.storage_path": str(storage), "sweep.max_failures": "0",
                 "run.checkpoint_config.save_every_n_epochs": "1",
                 "run.callbacks": f"[{{class: tl_testing.EpochLog, path: '{log}'}}]"})
    interrupt_after(["sweep", str(experiment), "--quiet", *args], log, interrupt_after_epochs, ray_tmp, tmp_path)
    directory = storage / name
    assert not (directory / "sweep_done").exists()

    status, output = resume_here(directory, shared_ray, capsys, "--quiet")
    assert status == 0, output
    assert (directory / "sweep_done").exists()

    with open(directory / "results.csv") as handle:
        results = list(csv.DictReader(handle))
    assert len(results) == trials, results
    assert {row["state"] for row in results} <= {"complete", "pruned"}, results
    assert "complete" in {row["state"] for row in results}, results
    study = study_of(directory, name)
    assert len(study.trials) == trials
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}

    rows = trial_rows(directory)
    assert len(rows) == trials
    for trial, history in rows.items():
        epochs_seen = [row["epoch"] for row in history]
        assert epochs_seen == list(range(len(epochs_seen))) and 0 < len(epochs_seen) <= epochs, (trial, epochs_seen)
    finished = [history[-1] for history in rows.values() if len(history) == epochs]
    assert finished and max(row["val_accuracy"] for row in finished) > better_than, finished
    return directory
