"""The live progress of a sweep (tuneloop.sweep_progress): the compact table from Tune's own
trials, redrawn in place on a terminal, printed into logs, silent with --quiet."""

from __future__ import annotations

import io

import pytest
import yaml
from ray.tune.experiment import Trial

from test_sweep import probe_experiment
from tuneloop import cli
from tuneloop.sweep_progress import SweepProgress


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
    assert lines[1] == "best val_loss 0.1 (trial_a3)"
    assert lines[2].split()[:5] == ["trial", "state", "epoch", "val_loss", "predicted"]
    assert lines[3].split() == ["trial_a3", "running", "12/30", "0.1", "0.05", "0.04"]
    assert len(lines) == 4


def test_a_terminal_gets_the_block_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    SweepProgress.configure(quiet=False, stream=screen)
    try:
        table = progress()
        running = [trial("a3", Trial.RUNNING, 0.04, val_loss=0.1, training_iteration=1)]
        table.on_experiment_end(running)
        first = screen.getvalue()
        assert "\x1b[" not in first and first.count("\n") == 4
        table.on_experiment_end(running)  # the second draw moves back over the 4 lines first
        assert screen.getvalue()[len(first):].startswith("\x1b[4F\x1b[J")
    finally:
        SweepProgress.configure(quiet=False)


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
