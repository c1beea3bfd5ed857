"""Data parallelism without Ray (`tuneloop.ranks`, and `build_run` under torch.distributed): shards,
sums over the ranks, one stop for all ranks, checkpoints without DDP's prefixes. The two-rank cases
run two processes of a gloo group (torch.multiprocessing), a few seconds in all."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tl_sweeps import probe_experiment
from tuneloop.ranks import agreed_stop, shard, summed



def test_one_process_is_the_identity():
    sums = torch.tensor([1.5, 2.0], dtype=torch.float32)
    assert summed(1, sums, 3, 4) == (sums, 3, 4)
    assert agreed_stop(1, "early_stopping") == "early_stopping" and agreed_stop(1, None) is None
    assert shard(torch.arange(5), 0, 1, even=True).tolist() == [0, 1, 2, 3, 4]


def test_shards_split_like_distributed_sampler():
    order = torch.tensor([4, 0, 3, 1, 2])
    assert shard(order, 0, 2, even=True).tolist() == [4, 3, 2] and shard(order, 1, 2, even=True).tolist() == [0, 1, 4]
    assert shard(order, 0, 2, even=False).tolist() == [4, 3, 2] and shard(order, 1, 2, even=False).tolist() == [0, 1]
    sampler = torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)
    assert shard(torch.arange(5), 1, 2, even=True).tolist() == list(sampler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank: int, port: int, experiment: dict, out: dict, backend: str = "gloo") -> None:
    """One rank: the probe run built and trained by `build_run` inside a process group of two
    (gloo on CPU; nccl: rank r on GPU r)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        from tuneloop.callbacks import TrainingCallback
        from tuneloop.config.schema import RunConfig
        from tuneloop.training.build import build_run

        class StopOnRankOne(TrainingCallback):  # a stop only rank 1 decides, from its own view
            priority = 60

            def __init__(self):
                self.stop = None

            def on_epoch_end(self, trainer, *, epoch, **kwargs):
                if trainer.rank == 1 and epoch == 1:
                    self.stop = "rank_one_says_so"

            def stop_reason(self):
                return self.stop

        run = RunConfig.model_validate(experiment["run"])
        parts = build_run(run, device=device, extra_callbacks=[StopOnRankOne()])
        trainer = parts.trainer
        records = []
        trainer.callbacks.add(type("Keep", (TrainingCallback,), {
            "priority": 99, "on_epoch_end": lambda self, trainer, **kw: records.append(
                (kw["epoch"], kw["train_loss"], kw["val_loss"], kw["metrics"]["val_accuracy"]))})())
        trainer.train(parts.train_loader, parts.val_loader, run.epochs)
        # the full validation set through this rank's (DDP-synchronised) model, in one process
        from tl_testing import blobs

        _, val = blobs()
        model = trainer.model.module
        with torch.no_grad():
            full = torch.nn.functional.cross_entropy(model(val.tensors[0].to(device)), val.tensors[1].to(device)).item()
        from tuneloop.checkpoints import collect_state

        keys = sorted(collect_state(trainer, 0)["model"])
        out[rank] = {"records": records, "stop": trainer.stop_reason, "full_val": full, "keys": keys,
                     "batches": len(parts.train_loader), "val_batches": len(parts.val_loader),
                     "world": (trainer.rank, trainer.world_size)}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")])])
def test_two_ranks_average_their_epochs_and_stop_together(tmp_path, backend):
    """Two ranks: the same averaged losses on both (the validation loss that of the whole
    validation set), a stop decided by rank 1 alone ends both after the same epoch, checkpoints
    hold the model without DDP's `module.` prefix."""
    experiment = probe_experiment(tmp_path, epochs=4)
    experiment["run"]["batch_size"] = 16  # 180 training samples: 90 per rank, 6 batches of 16 each
    experiment["run"]["val_batch_size"] = 7  # 60 validation samples: 30 per rank, uneven batches
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: this process has not initialized CUDA (device_count asks NVML), so the children may
        mp.start_processes(_two_ranks, args=(_free_port(), experiment, out, backend), nprocs=2, join=True,
                           start_method="fork")
        first, second = out[0], out[1]
    assert first["world"] == (0, 2) and second["world"] == (1, 2)
    assert first["batches"] == second["batches"] == 6 and first["val_batches"] == second["val_batches"] == 5
    assert first["records"] == second["records"]  # every rank sees the numbers of all
    assert [r[0] for r in first["records"]] == [0, 1]  # rank 1's stop after epoch 1 ended both
    assert first["stop"] == second["stop"] == "rank_one_says_so"
    assert first["full_val"] == pytest.approx(first["records"][-1][2], rel=1e-5)
    assert first["keys"] == second["keys"] and not any(k.startswith("module.") for k in first["keys"])


def _resume_ranks(rank: int, port: int, experiment: dict, path: str, out: dict) -> None:
    """One rank: 4 epochs straight, then 2 epochs, rank 0's checkpoint, a fresh build restored from it
    on every rank (as a restarted Train run does), 2 more epochs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        from tuneloop.callbacks import TrainingCallback
        from tuneloop.checkpoints import collect_state, restore_state
        from tuneloop.config.schema import RunConfig
        from tuneloop.training.build import build_run

        run = RunConfig.model_validate(experiment["run"])

        def trained(start: int, stop: int, state=None):
            records = []

            def keep(self, trainer, **kw):
                records.append((kw["epoch"], kw["train_loss"], kw["val_loss"]))
                if trainer.rank == 0 and kw["epoch"] == 1:  # where CheckpointCallback takes it (before the LR step)
                    torch.save(collect_state(trainer, 1), path)

            parts = build_run(run, device=torch.device("cpu"))
            parts.trainer.callbacks.add(type("Keep", (TrainingCallback,), {"priority": 95, "on_epoch_end": keep})())
            if state is not None:
                assert restore_state(parts.trainer, state) == start
            parts.trainer.train(parts.train_loader, parts.val_loader, stop, start)
            return parts.trainer, records

        _, straight = trained(0, 4)
        _, first = trained(0, 2)
        dist.barrier()
        _, second = trained(2, 4, torch.load(path, weights_only=True))
        out[rank] = {"straight": straight, "resumed": first + second}
    finally:
        dist.destroy_process_group()


def test_two_ranks_resume_bitwise_from_rank_zeros_checkpoint(tmp_path):
    """Resume under DDP is exact on CPU (gloo): rank 0's checkpoint, loaded by both ranks, continues
    with the losses of the uninterrupted run, bit for bit (optimizer, LR schedule and RNG in step)."""
    experiment = probe_experiment(tmp_path, epochs=4)
    experiment["run"].update(net="tl_testing.Probe", batch_size=16, scheduler="torch.optim.lr_scheduler.StepLR",
                             scheduler_config={"step_size": 1, "gamma": 0.7})
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_resume_ranks, args=(_free_port(), experiment, str(tmp_path / "state.pt"), out), nprocs=2,
                           join=True, start_method="fork")
        first, second = out[0], out[1]
    assert [r[0] for r in first["straight"]] == [0, 1, 2, 3]
    assert first["resumed"] == first["straight"] and second["resumed"] == second["straight"]
