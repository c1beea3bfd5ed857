"""`tuneloop train` and `tuneloop validate` end to end, in-process and through the console script."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuneloop import cli
from tuneloop.checkpoints import load_state

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "experiments" / "digits_mlp.yaml"


def test_train_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["train", str(DIGITS), "--set", "run.epochs=12", "--set", "run.scheduler_config.T_max=12",
                       "--set", "run.checkpoint_config.keep_last_k=2", "--set", "run.checkpoint_config.save_every_n_epochs=1",
                       "--output", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.count("epoch ") >= 12 and "epoch 12/12" in printed
    assert "final val_loss" in printed and "best val_loss" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    assert {"train_loss", "val_loss", "lr", "val_accuracy", "max_grad_norm", "predicted_final_loss"} <= set(rows[0])
    assert rows[9]["predicted_final_loss"] == "" and rows[10]["predicted_final_loss"] != ""  # from epoch index 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_trained"] == 12
    assert summary["best_val_loss"] == min(float(r["val_loss"]) for r in rows)
    assert summary["final_val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert float(rows[-1]["val_accuracy"]) > 0.8
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best", "epoch_10", "epoch_11"]
    best = load_state(out / "checkpoints" / "best")
    assert best["epoch"] == summary["best_epoch"]
    assert (out / "config.yaml").read_text().count("epochs: 12") == 1


def test_train_refuses_a_used_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("old\n")
    assert cli.main(["train", str(DIGITS), "--output", str(out)]) == 2
    assert "--output: the run directory must be new or empty" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == "old\n"


def test_validate_runs_one_batch(capsys):
    assert cli.main(["validate", str(DIGITS)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "input shape (128, 64) float32" in out and "output shape (128, 10) float32" in out and "loss" in out


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of the user's with broken data and models."""
    (tmp_path / "usercode.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def empty_val():
            x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
            return TensorDataset(x, y), TensorDataset(x[:0], y[:0])

        def mismatched():
            return (TensorDataset(torch.randn(32, 64), torch.randint(0, 10, (31,))),
                    TensorDataset(torch.randn(8, 64), torch.randint(0, 10, (8,))))

        class WrongHead(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(64, 3)
            def forward(self, x):
                return self.lin(x).sum(-1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "usercode"
    sys.modules.pop("usercode", None)


@pytest.mark.parametrize("overrides, fragments", [
    (["run.data=usercode.empty_val"], ["run.data", "the val split of usercode.empty_val() must not be empty"]),
    (["run.data=usercode.mismatched"], ["run.data", "usercode.mismatched() must not raise", "Size mismatch"]),
    (["run.net=usercode.WrongHead", "run.net_config={}", "sweep.search_space={}"],
     ["run.criterion", "on the model's outputs of shape (128,) float32 and targets of shape (128,) int64",
      "must not raise, but got RuntimeError"]),
])
def test_validate_preflight_catches_user_code(user_module, capsys, overrides, fragments):
    args = ["validate", str(DIGITS)]
    for item in overrides:
        args += ["--set", item]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_console_script_train(tmp_path):
    exe = Path(sys.executable).with_name("tuneloop")
    proc = subprocess.run([str(exe), "train", str(DIGITS), "--set", "run.epochs=2", "--output", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout
    assert (tmp_path / "r" / "metrics.csv").exists()


def test_sweep_without_a_search_space_is_refused_before_ray_starts(tmp_path, capsys, no_ray_running):
    import ray

    path = tmp_path / "exp.yaml"
    path.write_text((REPO / "experiments" / "digits_mlp.yaml").read_text())
    assert cli.main(["sweep", str(path), "--set", "sweep.search_space={}",
                     "--set", f"sweep.storage_path={tmp_path / 'results'}"]) == 2
    err = capsys.readouterr().err
    assert "exp.yaml: sweep.search_space: a sweep needs at least one parameter to search, but got {}" in err
    assert not ray.is_initialized() and not (tmp_path / "results").exists()
