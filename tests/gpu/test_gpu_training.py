"""Training on a real CUDA GPU (every test is `gpu`-marked and skipped where torch sees none, as in CI):

- a 1-trial `tuneloop sweep` of the CIFAR-shaped CNN trains on `cuda` (bf16, pinned loader workers);
- bf16 and fp16 steps through the Trainer: autocast in every forward, float32 weights, gradients
  unscaled before `on_before_optimizer_step`, a GradScaler that ran every fp16 step;
- 4 trials with `gpu: 0.25` run at once on one GPU (a barrier in the trials makes sure of it: no timing);
- a resumed run is bitwise the uninterrupted one on the GPU, the CUDA RNG (dropout) included;
- a reused actor starts its next trial without the previous trial's CUDA memory;
- no host sync in the training steps (CUDA's sync debug mode set to "error"), with fp16,
  gradient accumulation, clipping and the gradient monitor.

Run on a machine with a GPU: `.venv/bin/python -m pytest -n0 -q -m gpu tests/gpu` (about 2-3 minutes:
three of the tests are `tuneloop sweep` runs, each starting its own Ray).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from tl_recipes import REPO, sets
from tl_sweeps import probe_experiment, study_of, trial_rows
from tl_testing import assert_state_dicts_equal
from tuneloop.callbacks import (CheckpointCallback, GradientClippingCallback, GradientMonitorCallback,
                                NaNDetectionCallback, OptimizerModeCallback, TrainingCallback)
from tuneloop.checkpoints import load_state, restore_state
from tuneloop.metrics import accuracy
from tuneloop.recipes.digits import MLP
from tuneloop.trainer import Trainer
from tuneloop.training.data import TensorBatches, make_loader

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

MiB = 2**20


# --- helpers --------------------------------------------------------------------------------

def sweep(experiment: Path, tmp_path: Path, ray_tmp: str, overrides: dict[str, str],
          timeout: float = 420) -> tuple[subprocess.CompletedProcess, Path]:
    """`tuneloop sweep EXPERIMENT --quiet --set ...` in a process of its own (its embedded Ray in
    `ray_tmp`), results under `tmp_path/results`; returns the process and the experiment directory."""
    overrides = {"sweep.storage_path": str(tmp_path / "results"), **overrides}
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "sweep", str(experiment), "--quiet", *sets(overrides)],
                          cwd=tmp_path, env={**os.environ, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True,
                          timeout=timeout)
    name = yaml.safe_load(experiment.read_text())["run"]["name"]
    return done, tmp_path / "results" / name


def completed(directory: Path, name: str, trials: int, epochs: int) -> dict[str, list[dict]]:
    """The trials' result rows, after checking that `trials` trials each trained `epochs` epochs to
    their end, in Tune and in the Optuna study."""
    rows = trial_rows(directory)
    assert len(rows) == trials, sorted(rows)
    for trial, trial_rows_ in rows.items():
        assert [r["epoch"] for r in trial_rows_] == list(range(epochs)), trial
        assert trial_rows_[-1]["done_reason"] == "complete", trial_rows_[-1]
        assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in trial_rows_), trial
    assert [t.state for t in study_of(directory, name).trials] == [optuna.trial.TrialState.COMPLETE] * trials
    return rows


def json_files(directory: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def data(n=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def small_model(dropout=0.0):
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(32, 2))


class StepLog(TrainingCallback):
    """The step losses, and each optimizer step's gradients as the step sees them (their total
    norm and dtypes), kept on the device."""

    priority = 50

    def __init__(self):
        self.losses, self.grad_norms, self.grad_dtypes = [], [], set()

    def on_train_step_end(self, trainer, *, loss, **kwargs):
        self.losses.append(loss)

    def on_before_optimizer_step(self, trainer, **kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self.grad_norms.append(torch.nn.utils.get_total_norm(grads))
        self.grad_dtypes |= {g.dtype for g in grads}


# --- a trial on the GPU -----------------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_trial_trains_on_cuda(tmp_path, ray_tmp):
    """The CNN recipe (map-style dataset, 2 loader workers, pinned memory) as a 1-trial sweep with
    one GPU: the trial reports device cuda and the GPU Ray gave it, and trains to its end in bf16."""
    done, directory = sweep(REPO / "experiments" / "cifar_cnn.yaml", tmp_path, ray_tmp, {
        "run.data_config.n_train": "256", "run.data_config.n_val": "128", "run.epochs": "2",
        "run.precision": "bf16", "run.device": "cuda", "sweep.num_samples": "1", "sweep.max_concurrent_trials": "1",
        "sweep.scheduler": "{name: fifo}", "sweep.resources_per_trial.gpu": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    [rows] = completed(directory, "cifar_cnn", trials=1, epochs=2).values()
    assert {r["device"] for r in rows} == {"cuda"}, rows
    assert len({r["gpu_ids"] for r in rows}) == 1 and rows[0]["gpu_ids"].isdigit(), rows  # one whole GPU


# --- mixed precision ----------------------------------------------------------------------------

@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_steps_on_cuda(precision, dtype):
    """In every forward (training and validation) autocast is on with the precision's dtype and the
    layers compute in it; the weights and their gradients stay float32, the gradients a step sees
    are unscaled (the same as fp32's, to the precision's rounding, not 2**16 times larger), the
    losses are finite, and fp16's GradScaler scaled every step and skipped none."""
    x, y = data()
    train, val = TensorBatches(x, y, 16, shuffle=True, device="cuda"), TensorBatches(x, y, 64, device="cuda")

    def run(precision_):
        torch.manual_seed(0)
        model = small_model()
        seen = []
        model[0].register_forward_hook(lambda module, args, output: seen.append(
            (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), output.dtype, module.training)))
        log = StepLog()
        trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2), None, torch.nn.CrossEntropyLoss(),
                          [log], device="cuda", metrics={"accuracy": accuracy}, precision=precision_)
        val_loss = trainer.train(train, val, epochs=2)
        return trainer, log, seen, val_loss

    reference = run("fp32")[1]
    trainer, log, seen, val_loss = run(precision)
    steps = 2 * len(train)
    assert len(seen) == steps + 2 * len(val)
    assert {s[:3] for s in seen} == {(True, dtype, dtype)}, set(seen)
    assert {s[3] for s in seen} == {True, False}  # training and validation forwards alike
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert log.grad_dtypes == {torch.float32}
    assert float(log.grad_norms[0]) == pytest.approx(float(reference.grad_norms[0]), rel=0.05)
    assert bool(torch.isfinite(torch.stack(log.losses)).all()) and math.isfinite(val_loss)
    if precision == "fp16":
        state = trainer.scaler.state_dict()
        assert trainer.scaler.is_enabled() and state["scale"] == 2.0**16
        assert state["_growth_tracker"] == steps  # one successful scaled step per batch, none skipped
    else:
        assert not trainer.scaler.is_enabled()


# --- several trials on one GPU ---------------------------------------------------------------------

@pytest.mark.slow
def test_four_trials_share_one_gpu_at_once(tmp_path, ray_tmp):
    """`gpu: 0.25` and 4 concurrent trials: 4 trial processes hold the same GPU at the same time.
    Each trial waits at a barrier (tl_gpu.CudaBarrier) with its model on the GPU until all 4 are
    there, so they overlap however fast the machine is; the result rows then show 4 processes on
    one node and one GPU whose spans share a moment (every trial started before any reported)."""
    barrier = tmp_path / "barrier"
    experiment = probe_experiment(tmp_path, epochs=2, num_samples=4, max_concurrent_trials=4,
                                  resources_per_trial={"cpu": 0.5, "gpu": 0.25})
    experiment["run"]["callbacks"] = [{"class": "tl_gpu.CudaBarrier", "directory": str(barrier), "parties": 4}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    done, directory = sweep(path, tmp_path, ray_tmp, {})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = completed(directory, "probe", trials=4, epochs=2)

    arrivals = json_files(barrier)
    assert len(arrivals) == 4 and len({a["pid"] for a in arrivals}) == 4, arrivals
    assert len({a["uuid"] for a in arrivals}) == 1, arrivals  # one physical GPU
    assert all(a["device"].startswith("cuda") and a["allocated"] > 0 for a in arrivals), arrivals
    firsts = [trial[0] for trial in rows.values()]
    assert {r["device"] for trial in rows.values() for r in trial} == {"cuda"}
    assert len({r["pid"] for r in firsts}) == 4 and len({r["node_id"] for r in firsts}) == 1, firsts
    assert len({r["gpu_ids"] for r in firsts}) == 1 and firsts[0]["gpu_ids"].isdigit(), firsts
    assert max(r["started_at"] for r in firsts) < min(r["reported_at"] for r in firsts), firsts


# --- exact resume -----------------------------------------------------------------------------

class Seen(TrainingCallback):
    """Per epoch, after every other callback: the losses, the accuracy and the LR (bitwise)."""

    priority = 99

    def __init__(self):
        self.rows = []

    def on_epoch_end(self, trainer, *, epoch, train_loss, val_loss, metrics, **kwargs):
        self.rows.append((epoch, train_loss, val_loss, metrics["val_accuracy"], trainer.lr))


def build_on_cuda(digits, precision, checkpoint_dir=None, seed=123):
    """tests/test_checkpoints.py's exact-resume setup on the GPU: dropout (the CUDA RNG), shuffled
    batches, the LR changing every epoch; fp16 adds the GradScaler's state."""
    torch.manual_seed(seed)  # every device's generator
    model = MLP(hidden=48, layers=2, dropout=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    seen = Seen()
    callbacks = [seen]
    if checkpoint_dir is not None:
        callbacks.append(CheckpointCallback(checkpoint_dir, keep_last_k=20, config_hash="abc"))
    trainer = Trainer(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), callbacks, device="cuda",
                      metrics={"accuracy": accuracy}, precision=precision)
    train_set, val_set = digits
    return (trainer, make_loader(train_set, 128, shuffle=True, seed=5, device="cuda"),
            make_loader(val_set, 256, shuffle=False, seed=5, device="cuda"), seen)


@pytest.fixture
def deterministic(monkeypatch):
    """cuBLAS's deterministic workspace setting and torch's deterministic algorithms (a warning,
    not an error, for an op without one: the bitwise comparison is the judge)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_exact_resume_on_the_gpu_includes_the_cuda_rng(digits, tmp_path, precision):
    """4 epochs straight vs 2 epochs, a checkpoint, a fresh trainer (other seeds) restored from it
    and 2 more: the same losses, LR and weights bit for bit. Restoring everything but the CUDA
    generator (re-seeded after the restore) changes the dropout masks and the weights: the
    checkpoint's CUDA RNG state is what makes the resume exact."""
    whole, train, val, whole_seen = build_on_cuda(digits, precision)
    whole.train(train, val, epochs=4)

    first, train, val, _ = build_on_cuda(digits, precision, tmp_path / "ck")
    first.train(train, val, epochs=2)
    state = load_state(tmp_path / "ck" / "epoch_1", expected_hash="abc", map_location="cuda")
    assert "cuda" in state["rng"]
    assert (state["scaler"] is not None) == (precision == "fp16")

    def resume(reseed_cuda: bool):
        torch.manual_seed(999)  # a new process: other RNG states on every device; the checkpoint restores them
        trainer, train, val, seen = build_on_cuda(digits, precision, seed=7)
        assert restore_state(trainer, state) == 2
        if reseed_cuda:
            torch.cuda.manual_seed_all(999)
        trainer.train(train, val, epochs=4, start_epoch=2)
        return trainer, seen

    resumed, resumed_seen = resume(reseed_cuda=False)
    assert [row[0] for row in resumed_seen.rows] == [2, 3]
    assert resumed_seen.rows == whole_seen.rows[2:]
    assert_state_dicts_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert_state_dicts_equal(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()

    other, _ = resume(reseed_cuda=True)
    assert not all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(),
                                                     whole.model.state_dict().values()))


# --- memory between trials on a reused actor ---------------------------------------------------

SIZE = {"hidden": 5120, "layers": 2}  # about 26.6M parameters: ~101 MiB, and as much per gradient and AdamW moment
WORKSPACES = 80 * MiB  # cuBLAS/cuBLASLt workspaces of torch's (32 MiB each on Hopper) that a clear may not reach


@pytest.mark.slow
def test_a_reused_actor_starts_each_trial_without_the_previous_ones_memory(tmp_path, ray_tmp):
    """3 trials, one at a time, on one reused actor (one pid), each with a ~100 MiB model trained
    with AdamW: each starts with its own model's memory on the GPU and nothing of the previous
    trial's (its weights, gradients and AdamW moments: ~400 MiB), as read by tl_gpu.CudaMemoryLog."""
    log = tmp_path / "memory"
    done, directory = sweep(REPO / "experiments" / "digits_mlp.yaml", tmp_path, ray_tmp, {
        "run.net_config": f"{{hidden: {SIZE['hidden']}, layers: {SIZE['layers']}, dropout: 0.1}}",
        "run.optimizer": "torch.optim.AdamW", "run.optimizer_config": "{lr: 1.0e-3}",
        "run.epochs": "2", "run.scheduler_config.T_max": "2", "run.checkpoint_config.save_every_n_epochs": "2",
        "run.callbacks": f"[{{class: tl_gpu.CudaMemoryLog, directory: '{log}'}}]",
        "sweep.num_samples": "3", "sweep.max_concurrent_trials": "1", "sweep.scheduler": "{name: fifo}",
        "sweep.resources_per_trial": "{cpu: 1, gpu: 1}",
        "sweep.search_space": f"{{net_config.hidden: {{type: categorical, choices: [{SIZE['hidden']}]}}}}"})
    assert done.returncode == 0, done.stdout + done.stderr
    completed(directory, "digits_mlp", trials=3, epochs=2)
    records = sorted(json_files(log), key=lambda r: r["started_at"])
    assert len(records) == 3
    assert len({r["pid"] for r in records}) == 1, "Tune did not reuse the actor: this test needs one process"
    first, *later = records
    own = first["parameter_bytes"]
    assert own > WORKSPACES  # a leak of even the previous trial's weights alone shows
    assert first["at_end"] - first["at_begin"] >= 2 * own, first  # gradients and moments: a trial's real footprint
    assert first["at_begin"] - own <= 8 * MiB, first  # its weights and the (small) data, nothing else
    shown = [f"{(r['at_begin'] - own) / MiB:.1f}" for r in records]
    for record in later:
        assert record["at_begin"] - first["at_begin"] <= WORKSPACES, f"MiB beyond the trial's own weights: {shown}"
    assert abs(later[1]["at_begin"] - later[0]["at_begin"]) <= 2 * MiB, f"grows trial after trial: {shown}"


# --- no host sync per step -------------------------------------------------------------------------

class SyncsAreErrors(TrainingCallback):
    """CUDA's sync debug mode "error" from the first training step of epoch `from_epoch` on to the
    end of each epoch's last step (the epoch's one read of its loss comes after): a host sync in
    a step raises."""

    priority = 1000  # after every other callback's hooks

    def __init__(self, batches: int, from_epoch: int):
        self.batches, self.from_epoch = batches, from_epoch

    def on_train_epoch_begin(self, trainer, *, epoch, **kwargs):
        if epoch >= self.from_epoch:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_step_end(self, trainer, *, batch_idx, **kwargs):
        if batch_idx == self.batches - 1:
            torch.cuda.set_sync_debug_mode("default")


class NormAfterClipping(TrainingCallback):
    """The total gradient norm each optimizer step takes, after the clipping (kept on the device)."""

    priority = 30  # after GradientClippingCallback (20)

    def __init__(self):
        self.norms = []

    def on_train_epoch_begin(self, trainer, **kwargs):
        self.norms = []

    def on_before_optimizer_step(self, trainer, **kwargs):
        self.norms.append(torch.nn.utils.get_total_norm([p.grad for p in trainer.model.parameters()]))


class ReadsTheLoss(TrainingCallback):
    """Reads each step's loss on the host: a sync the check must catch."""

    def on_train_step_end(self, trainer, *, loss, **kwargs):
        float(loss)


@pytest.mark.parametrize("precision, optimizer_options, extra", [
    ("bf16", {}, None),
    # fp16 needs a fused optimizer: with any other, torch's GradScaler.step reads found_inf on the
    # host (`.item()`) at every optimizer step to decide whether to skip it
    ("fp16", {"fused": True}, None),
    ("fp16", {"fused": True}, ReadsTheLoss),  # the control: a step that syncs is caught
], ids=["bf16", "fp16-fused", "control-a-sync-is-caught"])
def test_no_host_sync_in_the_training_steps(precision, optimizer_options, extra):
    """An epoch of 32 batches with gradient accumulation over 3 (a last, partial step), clipping to
    a norm of 0.05, the gradient monitor, NaN detection and the optimizer-mode switch runs with
    every host sync an error; its 11 optimizer steps all happened (none skipped by the scaler) and
    were clipped. A first epoch, unchecked, makes the one-off set-ups (cuBLAS handles, optimizer
    and scaler state): what is checked is the steady state, step after step."""
    x, y = data(n=256)
    loader = TensorBatches(x, y, 8, device="cuda")  # on the device, unshuffled: no host-to-device copy per epoch
    torch.manual_seed(0)
    model = small_model(dropout=0.1)
    after_clipping = NormAfterClipping()
    monitor = GradientMonitorCallback()
    callbacks = [NaNDetectionCallback(), OptimizerModeCallback(), monitor, GradientClippingCallback(0.05),
                 after_clipping, SyncsAreErrors(len(loader), from_epoch=1), *([extra()] if extra else [])]
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2, **optimizer_options), None,
                      torch.nn.CrossEntropyLoss(), callbacks, device="cuda", precision=precision, accumulate_steps=3)
    try:
        trainer.train_epoch(loader, 0)
        if extra is ReadsTheLoss:
            with pytest.raises(RuntimeError, match="synchronizing"):
                trainer.train_epoch(loader, 1)
            return
        train_loss = trainer.train_epoch(loader, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    steps = math.ceil(len(loader) / 3)
    assert math.isfinite(train_loss)
    assert len(monitor.step_norms()) == len(after_clipping.norms) == steps
    assert float(torch.stack(after_clipping.norms).max()) <= 0.05 * 1.001
    assert float(monitor.step_norms().max()) > 0.05  # there was something to clip
    if precision == "fp16":
        assert trainer.scaler.state_dict()["_growth_tracker"] == 2 * steps
