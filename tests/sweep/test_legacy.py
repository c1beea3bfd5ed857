"""A sweep written by tuneloop 0.1 (the flat module layout) still resumes: Tune pickled tuneloop's
searcher, schedulers and callbacks by their old module paths (tests/data/sweep_v0_1/README.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "sweep_v0_1"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy_asha", "legacy_pfl"])
def test_a_sweep_of_the_flat_layout_resumes_to_its_end(tmp_path, ray_tmp, name):
    directory = tmp_path / "results" / name
    shutil.copytree(DATA / name, directory)
    state_file = {"legacy_asha": "asha_state.pkl", "legacy_pfl": "pfl_state.json"}[name]
    assert (directory / state_file).is_file() and not (directory / "sweep_done").exists()
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "resume", str(directory), "--quiet"], cwd=tmp_path,
                          env={**os.environ, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (directory / "sweep_done").is_file()
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 1
    results = sorted(directory.glob("trial_*/result.json"))
    assert len(results) == 4
    for result in results:  # the two trials interrupted mid-run continued where they were
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs == list(range(len(epochs)))
    assert "4 trials:" in done.stdout
