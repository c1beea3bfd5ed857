"""The live progress of a sweep (tuneloop.sweep_progress): the compact table from Tune's own
trials, redrawn in place on a terminal, printed into logs, silent with --quiet."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import yaml
from ray.tune.experiment import Trial

from tl_sweeps import probe_experiment
from tuneloop import cli
from tuneloop.sweep.progress import SweepProgress


def trial(trial_id: str, status: str, lr: float, **result) -> Trial:
    t = Trial("train_trial", config={"optimizer_config.lr": lr}, trial_id=trial_id, stub=True)
    t.set_status(status)
    if result:
        t.run_metadata.last_result = result
    return t


def progress() -> SweepProgress:
    return SweepProgress("probe", "asha", "val_loss", "min", num_samples=6, epochs=30,
                         keys=["optimizer_config.lr"])


def test_the_table_counts_trials_by_state_and_shows_the_running_ones():
    trials = [
        trial("a0", Trial.TERMINATED, 0.1, val_loss=0.2, trial_done=True, training_iteration=30),
        trial("a1", Trial.TERMINATED, 0.2, val_loss=0.5, trial_done=False, training_iteration=3),
        trial("a2", Trial.ERROR, 0.3),
        trial("a3", Trial.RUNNING, 0.04, val_loss=0.1, predicted_final_loss=0.05, training_iteration=12),
        trial("a4", Trial.PENDING, 0.5),
    ]
    lines = progress().render(trials, elapsed=75)
    assert lines[0] == ("probe · asha · 1:15 · 3/6 done (1 complete, 1 pruned, 1 failed) · 1 running · "
                        "2 pending")
    assert lines[1] == "best val_loss 0.2 (trial_a0)"  # the best complete trial (a3 still runs)
    assert lines[2].split()[:5] == ["trial", "state", "epoch", "val_loss", "predicted"]
    assert lines[3].split() == ["trial_a3", "running", "12/30", "0.1", "0.05", "0.04"]
    assert len(lines) == 4


def test_the_best_is_the_best_complete_trial_on_the_sweeps_metric_and_mode():
    """The rule of the study, results.csv, best.yaml and `tuneloop report`: pruned or running trials
    with a better last value are not the best; a trial whose metric is NaN failed."""
    table = SweepProgress("probe", "asha", "val_accuracy", "max", num_samples=6, epochs=30,
                          keys=["optimizer_config.lr"])
    trials = [
        trial("c0", Trial.TERMINATED, 0.1, val_loss=0.4, val_accuracy=0.80, trial_done=True, training_iteration=30),
        trial("c1", Trial.TERMINATED, 0.2, val_loss=0.3, val_accuracy=0.85, trial_done=True, training_iteration=30),
        trial("p0", Trial.TERMINATED, 0.3, val_loss=0.2, val_accuracy=0.95, trial_done=False, training_iteration=3),
        trial("f0", Trial.TERMINATED, 0.4, val_loss=0.1, val_accuracy=float("nan"), trial_done=True,
              training_iteration=30),
        trial("r0", Trial.RUNNING, 0.5, val_loss=0.1, val_accuracy=0.99, training_iteration=12),
    ]
    lines = table.render(trials, elapsed=5)
    assert "4/6 done (2 complete, 1 pruned, 1 failed)" in lines[0]
    assert lines[1] == "best val_accuracy 0.85 (trial_c1)"  # max, complete only
    assert "best" not in "".join(table.render(trials[2:], elapsed=5))  # none complete: no best yet


def test_a_terminal_gets_the_block_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    table = progress()
    table.display(quiet=False, stream=screen)
    running = [trial("a3", Trial.RUNNING, 0.04, val_loss=0.1, training_iteration=1)]
    table.on_experiment_end(running)
    first = screen.getvalue()
    assert "\x1b[" not in first and first.count("\n") == 3  # counts, header, the running trial
    table.on_experiment_end(running)  # the second draw moves back over the 3 lines first
    assert screen.getvalue()[len(first):].startswith("\x1b[3F\x1b[J")


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("quiet", [False, True])
def test_a_sweep_prints_the_compact_table_not_rays_columns(tmp_path, capsys, quiet):
    experiment = probe_experiment(tmp_path, epochs=3, num_samples=3,
                                  scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3})
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    status = cli.main(["sweep", str(path), *(["--quiet"] if quiet else [])])
    assert status == 0
    out = capsys.readouterr().out
    assert "Trial status" not in out and "Configuration for experiment" not in out  # Ray's reporters are off
    announced = [line for line in out.splitlines() if line.startswith("[tuneloop] trial_")]
    blocks = [line for line in out.splitlines() if line.startswith("probe · asha · ")]
    if quiet:
        assert announced == [] and blocks == []
    else:
        assert len(announced) == 3, out
        assert all(" after " in line and "val_loss=" in line for line in announced)
        assert blocks and blocks[-1].endswith("3/3 done (" + blocks[-1].split("3/3 done (")[1])
        assert " · 0 running · 0 pending" in blocks[-1]
    assert "3 trials:" in out  # the summary table, in both modes


@pytest.mark.slow
def test_the_sweeps_output_is_tuneloops_lines_and_each_trials_own_prefixed_by_its_id(tmp_path, ray_tmp):
    """Through the console script on an embedded local Ray: no Ray worker prefixes (`(train_trial
    pid=...)`), no `[repeated ...]` dedup notes, no token-authentication warning, no Optuna log
    lines; what a trial printed or warned comes as `[tuneloop] trial_<id>: <line>`."""
    import csv
    import os
    import subprocess
    import sys

    experiment = probe_experiment(tmp_path, epochs=3, num_samples=2,
                                  scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3})
    experiment["run"]["callbacks"] = [{"class": "tl_testing.Warner"}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DEDUP_LOGS")}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "sweep", "experiment.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    for noise in ("pid=", "repeated", "Token authentication", "A new study created", "WARNING"):
        assert noise not in output, (noise, output)
    with open(tmp_path / "results" / "probe" / "results.csv") as handle:
        trial_ids = {row["trial_id"] for row in csv.DictReader(handle)}
    # one trial at a time: the embedded Ray has 1 CPU (so one idle worker at its start), not one per
    # core. The raylet logs its resources as it starts; how many workers it started later is Tune's
    # choice (it may start a new actor for the second trial rather than reuse the first one's).
    raylet = next(Path(ray_tmp).glob("ray/session_2*/logs/raylet.out")).read_text()
    resources = re.search(r"InitialConfigResources: \{(.*)\}", raylet)
    assert len(trial_ids) == 2 and resources and re.search(r"(^|, )CPU: 1(,|$)", resources[1]), resources
    own = [line for line in output.splitlines() if line.startswith("[tuneloop] trial_") and ": " in line]
    said = {}
    for line in own:
        head, _, text = line.partition(": ")
        said.setdefault(head.removeprefix("[tuneloop] trial_"), []).append(text)
    assert set(said) == trial_ids  # every trial's lines, each under its own id
    for trial_id, texts in said.items():
        assert any(f"UserWarning: probe warning at epoch 0 of {trial_id}" in text for text in texts), texts
        assert "probe says epoch 0 ended" in texts
    assert all(line.startswith(("[tuneloop] ", "probe · ", "best ", "trial ", "experiment directory: "))
               or line.split()[0] in trial_ids or line.startswith(("2 trials:", "best: "))
               for line in output.splitlines() if line.strip()), output
