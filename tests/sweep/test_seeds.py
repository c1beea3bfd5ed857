"""`tuneloop train EXPERIMENT --seeds N` (tuneloop.seeds): N seeds of one configuration as Ray
tasks on a real local Ray, running side by side when the resources allow; per-seed directories,
seeds.csv / seeds.json, and a mean ± std that matches the per-seed metrics.csv files."""

from __future__ import annotations

import csv
import json
import statistics
import threading
import time
from pathlib import Path

import pytest
import yaml

from tl_ray import start_ray, stop_ray
from tl_sweeps import epochs_logged, probe_experiment
from tuneloop import cli


def wait_for_lines(path: Path, count: int, timeout_s: float = 120) -> bool:
    """Whether `path` holds `count` lines within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if epochs_logged(path) >= count:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.ray
def test_seeds_train_side_by_side_and_summarize(tmp_path, capsys, no_ray_running):
    gate = tmp_path / "gate"
    experiment = probe_experiment(tmp_path, epochs=3)
    # every seed waits at epoch 1 until the test opens the gate: it opens once two wait at once
    experiment["run"]["callbacks"] = [{"class": "tl_chaos.Gate", "gate": str(gate), "from_epoch": 1}]
    experiment["run"]["seed"] = 7
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(experiment))
    gate.touch()
    side_by_side = []

    def opener():
        side_by_side.append(wait_for_lines(Path(f"{gate}.waits"), 2))
        gate.unlink()

    temp_dir = start_ray(num_cpus=2)
    thread = threading.Thread(target=opener, daemon=True)
    thread.start()
    try:
        status = cli.main(["train", str(path), "--seeds", "3", "--output", str(tmp_path / "final")])
    finally:
        thread.join(timeout=150)
        stop_ray(temp_dir)
    out = capsys.readouterr().out
    assert status == 0, out
    assert side_by_side == [True]  # two seeds held at the gate at the same time: parallel tasks

    final = tmp_path / "final"
    rows = list(csv.DictReader((final / "seeds.csv").open()))
    assert sorted(int(r["seed"]) for r in rows) == [7, 8, 9]
    finals, bests = [], []
    for row in rows:
        seed_dir = final / f"seed_{row['seed']}"
        epochs = list(csv.DictReader((seed_dir / "metrics.csv").open()))
        assert [int(e["epoch"]) for e in epochs] == [0, 1, 2]
        losses = [float(e["val_loss"]) for e in epochs]
        assert float(row["final_val_loss"]) == pytest.approx(losses[-1])
        assert float(row["best_val_loss"]) == pytest.approx(min(losses))
        assert yaml.safe_load((seed_dir / "config.yaml").read_text())["run"]["seed"] == int(row["seed"])
        finals.append(losses[-1])
        bests.append(min(losses))
    assert len(set(finals)) == 3  # the seeds really differ

    summary = json.loads((final / "seeds.json").read_text())["summary"]
    assert summary["final_val_loss"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert summary["final_val_loss"]["std"] == pytest.approx(statistics.stdev(finals))
    assert summary["best_val_loss"]["mean"] == pytest.approx(statistics.fmean(bests))
    assert summary["final_val_loss"]["n"] == summary["best_val_loss"]["n"] == 3
    mean, std = summary["final_val_loss"]["mean"], summary["final_val_loss"]["std"]
    assert f"final val_loss: {mean:.6g} ± {std:.3g} (mean ± std over 3 seeds)" in out


def test_seeds_must_be_positive(tmp_path, capsys):
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(probe_experiment(tmp_path)))
    assert cli.main(["train", str(path), "--seeds", "0", "--output", str(tmp_path / "final")]) == 2
    assert "--seeds: must be at least 1, but got 0" in capsys.readouterr().err
    assert not (tmp_path / "final").exists()
