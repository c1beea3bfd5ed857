"""`tuneloop train` (tuneloop.training.run): Ctrl-C, `--resume RUN_DIR` bitwise as if never
interrupted, and the one-batch preflight before anything is written.

The interrupted runs are real: `tuneloop train` in a subprocess whose own callback sends it SIGINT
at the end of an epoch (tests/support/tl_train_faults.py), resumed here and compared with an
uninterrupted run of the same experiment, file by file and tensor by tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tuneloop import cli
from tuneloop.checkpoints import load_state
from tuneloop.training.run import interrupted_line

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "experiments" / "digits_mlp.yaml"
# 6 epochs, a periodic checkpoint after every second (epoch_1, epoch_3, epoch_5), on the CPU
SMALL = ["--set", "run.epochs=6", "--set", "run.checkpoint_config.save_every_n_epochs=2", "--device", "cpu"]
RESUME_HINT = "tuneloop train --resume"


def same(a, b) -> bool:
    """Equal bit for bit: tensors by `torch.equal` (and dtype), containers item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def summary(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k != "run_dir"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run (in this process, one intra-op thread like the subprocesses)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main(["train", str(DIGITS), *SMALL, "--output", str(run_dir)]) == 0
    return run_dir


def interrupted_run(tmp_path: Path, epoch: int) -> tuple[Path, subprocess.CompletedProcess]:
    """`tuneloop train` in a subprocess, Ctrl-C'd (SIGINT) once at the end of `epoch`."""
    run_dir = tmp_path / "run"
    callback = f"[{{class: tl_train_faults.InterruptAfterEpoch, epoch: {epoch}, marker: '{tmp_path / 'sigint'}'}}]"
    proc = subprocess.run([sys.executable, "-m", "tuneloop.cli", "train", str(DIGITS), *SMALL,
                           "--set", f"run.callbacks={callback}", "--output", str(run_dir)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # PYTHONPATH holds tests/support
    return run_dir, proc


@pytest.mark.parametrize("epoch, damage, resumed_after", [
    (3, False, 4),  # at a checkpoint (epoch_3): nothing is trained again
    (2, False, 2),  # between checkpoints: epoch 2 is trained again from epoch_1
    (3, True, 2),  # epoch_3 truncated as by a crash while writing it: epoch_1 instead
])
def test_interrupted_train_resumes_bitwise(straight, tmp_path, capsys, epoch, damage, resumed_after):
    run_dir, proc = interrupted_run(tmp_path, epoch)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    hints = [line for line in output.splitlines() if RESUME_HINT in line]
    assert hints == [f"[tuneloop] interrupted after epoch {epoch + 1}/6"
                     + ("" if epoch % 2 else " (last checkpoint after epoch 2/6)")
                     + f"; continue with: {RESUME_HINT} {run_dir}"], output
    assert summary(run_dir)["stop_reason"] == "interrupted" and summary(run_dir)["epochs_trained"] == epoch + 1
    straight_rows = (straight / "metrics.csv").read_text().splitlines()
    assert (run_dir / "metrics.csv").read_text().splitlines() == straight_rows[:epoch + 2]  # header and rows
    if damage:
        state = run_dir / "checkpoints" / "epoch_3" / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"continuing digits_mlp on cpu after epoch {resumed_after}/6" in out
    assert out.count("skipping a damaged checkpoint") == int(damage)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == \
        [f"{n}/6" for n in range(resumed_after + 1, 7)]
    assert (run_dir / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()
    assert summary(run_dir) == summary(straight) and summary(run_dir)["stop_reason"] is None
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "epoch_1", "epoch_3", "epoch_5"]
    for name in ("epoch_5", "best"):  # model, optimizer, schedule, callbacks, RNG: all of it
        assert same(load_state(run_dir / "checkpoints" / name), load_state(straight / "checkpoints" / name)), name


def test_resume_without_a_checkpoint_trains_from_the_start(straight, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(straight / "config.yaml", run_dir / "config.yaml")  # as a run stopped in its first epoch
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert "has no checkpoint yet: training digits_mlp on cpu from epoch 1 of 6" in capsys.readouterr().out
    assert (run_dir / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()
    assert same(load_state(run_dir / "checkpoints" / "epoch_5"), load_state(straight / "checkpoints" / "epoch_5"))


def test_resume_of_a_run_that_had_ended_trains_nothing(straight, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    (run_dir / "summary.json").unlink()  # as if killed between its last checkpoint and its summary
    before = (run_dir / "metrics.csv").stat().st_mtime_ns
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "had already ended after epoch 6/6 (complete): nothing left to train" in out
    assert "epoch 1/6" not in out and (run_dir / "metrics.csv").stat().st_mtime_ns == before
    assert summary(run_dir) == summary(straight)


@pytest.mark.parametrize("args, message", [
    (["--resume", "{missing}"], "--resume: must be a run directory of tuneloop train (holding config.yaml), "
                                "but got '{missing}'"),
    (["--resume", "{empty}"], "--resume: must be a run directory of tuneloop train (holding config.yaml), "
                              "but got '{empty}'"),
    (["--resume", "{run}", "--set", "run.epochs=9"], "--set: must not be given with --resume (a resumed run keeps "
                                                     "its config.yaml and directory), but got 'run.epochs=9'"),
    (["--resume", "{run}", "--seeds", "2"], "--seeds: must not be given with --resume"),
    (["--resume", "{run}", "--output", "{empty}"], "--output: must not be given with --resume"),
    (["{digits}", "--resume", "{run}"], "tuneloop train: exactly one of EXPERIMENT and --resume RUN_DIR must be "
                                        "given, but got both"),
    ([], "tuneloop train: exactly one of EXPERIMENT and --resume RUN_DIR must be given, but got neither"),
])
def test_resume_refuses_bad_arguments(straight, tmp_path, capsys, args, message):
    places = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path), "run": str(straight),
              "digits": str(DIGITS)}
    assert cli.main(["train", *(a.format(**places) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message.format(**places) in err, err


def test_resume_refuses_checkpoints_of_another_config(straight, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 128", "hidden: 64"))  # another model
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --resume: the run's checkpoints must be of its "
                                                   "config.yaml, but got ") and "another experiment" in err, err


def test_the_interrupted_line_says_where_a_resume_starts(tmp_path):
    from tuneloop.checkpoints import save_state

    hint = f"; continue with: {RESUME_HINT} {tmp_path}"
    assert interrupted_line(tmp_path, 0, 6) == f"[tuneloop] interrupted in epoch 1/6{hint}"
    assert interrupted_line(tmp_path, 1, 6) == f"[tuneloop] interrupted after epoch 1/6 (no checkpoint yet){hint}"
    save_state({"epoch": 1}, tmp_path / "checkpoints" / "epoch_1")
    assert interrupted_line(tmp_path, 2, 6) == f"[tuneloop] interrupted after epoch 2/6{hint}"
    assert interrupted_line(tmp_path, 3, 6) == \
        f"[tuneloop] interrupted after epoch 3/6 (last checkpoint after epoch 2/6){hint}"
    assert interrupted_line(tmp_path / "a b", 0, 6).endswith(f"--resume '{tmp_path / 'a b'}'")


def test_ctrl_c_before_training_writes_nothing(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tuneloop.training.preflight.preflight", interrupt)
    assert cli.main(["train", str(DIGITS), "--output", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().out == "[tuneloop] interrupted before training started; nothing was written\n"
    assert not (tmp_path / "run").exists()


@pytest.fixture
def labels_module(tmp_path, monkeypatch):
    """The user's data: `bad` has class labels out of the model's range, `good` does not."""
    (tmp_path / "train_labels.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def data(bad):
            x, y = torch.rand(96, 64), torch.randint(0, 10, (96,))
            if bad:
                y = y + 10
            return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])

        def bad():
            return data(True)

        def good():
            return data(False)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "train_labels"
    sys.modules.pop("train_labels", None)


def test_train_runs_the_preflight_before_writing(labels_module, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(DIGITS), "--set", "run.epochs=1", "--device", "cpu", "--output", str(run_dir)]
    assert cli.main([*args, "--set", f"run.data={labels_module}.bad"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {DIGITS}: run.") and "must not raise" in err, err
    assert not run_dir.exists()
    assert cli.main([*args, "--set", f"run.data={labels_module}.good"]) == 0  # the same directory, once fixed
    assert summary(run_dir)["epochs_trained"] == 1
