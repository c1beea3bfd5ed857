"""Data parallelism without Ray (`tuneloop.ranks`, and `build_run` under torch.distributed): shards,
sums over the ranks, one stop for all ranks, checkpoints without DDP's prefixes. The two-rank cases
run two processes of a gloo group (torch.multiprocessing), a few seconds in all."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tl_sweeps import probe_experiment
from tuneloop.ranks import agreed_stop, shard, split_stream, stream_share, summed



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


def test_streams_split_like_accelerates_iterable_dataset_shard():
    """Of each group of world_size samples, the rank-th; training drops an incomplete last group
    (every rank as many samples), validation splits it as far as it goes (each sample once)."""
    def split(size, world, even):
        return [list(split_stream(range(size), rank, world, even)) for rank in range(world)]

    assert split(7, 2, even=True) == [[0, 2, 4], [1, 3, 5]]
    assert split(7, 2, even=False) == [[0, 2, 4, 6], [1, 3, 5]]
    assert split(7, 3, even=True) == [[0, 3], [1, 4], [2, 5]]
    assert split(7, 3, even=False) == [[0, 3, 6], [1, 4], [2, 5]]
    assert split(1, 2, even=False) == [[0], []] and split(1, 2, even=True) == [[], []]
    assert list(split_stream(iter(range(5)), 0, 1, even=True)) == [0, 1, 2, 3, 4]
    for size in range(9):
        for even in (True, False):
            assert [stream_share(size, r, 3, even) for r in range(3)] == [len(part) for part in split(size, 3, even)]


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


def _stream_ranks(rank: int, port: int, experiment: dict, out: dict) -> None:
    """One rank: a run on iterable datasets (`tl_testing.blob_streams`) with BatchNorm, built by
    `build_run`; then an epoch, a validation stream of one sample (rank 1 has no batch), an epoch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a collective that one rank makes and the other not fails after the timeout instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        from tl_testing import Samples, blob_streams
        from tuneloop.callbacks import TrainingCallback
        from tuneloop.config.schema import RunConfig
        from tuneloop.training.build import build_run
        from tuneloop.training.data import make_loader

        run = RunConfig.model_validate(experiment["run"])
        parts = build_run(run, device=torch.device("cpu"))
        trainer = parts.trainer
        records = []
        trainer.callbacks.add(type("Keep", (TrainingCallback,), {
            "priority": 99, "on_epoch_end": lambda self, trainer, **kw: records.append(
                (kw["epoch"], len(trainer.trained), kw["val_loss"], kw["metrics"]["val_accuracy"]))})())
        trainer.train(parts.train_loader, parts.val_loader, run.epochs)
        state = {k: v.clone() for k, v in trainer.model.module.state_dict().items()}
        model = trainer.model.module.eval()
        x, y = next(iter(blob_streams(**run.data_config)[1]))
        with torch.no_grad():
            alone = torch.nn.functional.cross_entropy(model(x[None]), y[None]).item()
        lone = make_loader(Samples(torch.utils.data.TensorDataset(x[None], y[None])), 10, False, 0, "cpu",
                           rank=rank, world_size=2, even=False)
        # right after training, as in an epoch: DDP's forward would broadcast buffers on rank 0 alone
        more = [trainer.train_epoch(parts.train_loader, run.epochs)]
        model.load_state_dict(state)
        lone_val, _ = trainer.val_epoch(lone, run.epochs)
        more.append(trainer.train_epoch(parts.train_loader, run.epochs + 1))
        out[rank] = {"records": records, "trained": [b.tolist() for b in trainer.trained], "state": state,
                     "lone": (lone_val, alone), "more": more}
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_an_iterable_stream_once_and_validate_it_whole(tmp_path):
    """An iterable training stream of 181 samples on two ranks: the 90 pairs split between them,
    the 181st (an incomplete group) dropped, so both train 6 batches an epoch and each sample once.
    The validation stream of 61 samples (ranks: 31 and 30, 4 and 3 batches) gives the loss and
    accuracy of the whole set in one process, to float tolerance (the sums run in another order:
    per rank, then over the ranks). With BatchNorm; a validation where rank 1 has no batch at all
    gives that one sample's loss and the ranks go on training in step."""
    from tl_testing import Samples, blob_streams
    from tuneloop.trainer import Trainer
    from tuneloop.training.data import make_loader

    experiment = probe_experiment(tmp_path, epochs=2)
    experiment["run"].update(data="tl_testing.blob_streams", data_config={"n": 242}, trainer="tl_testing.InputLog",
                             net_config={"hidden": 16, "norm": True}, batch_size=16, val_batch_size=10)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_stream_ranks, args=(_free_port(), experiment, out), nprocs=2, join=True,
                           start_method="fork")
        first, second = out[0], out[1]
    train, val = blob_streams(242)
    assert len(train.tensors[0]) == 181 and len(val.tensors[0]) == 61
    ids = {tuple(row.tolist()): i for i, row in enumerate(train.tensors[0])}
    trained = {rank: [[ids[tuple(row)] for row in batch] for batch in part["trained"]]
               for rank, part in ((0, first), (1, second))}
    assert [len(trained[0]), len(trained[1])] == [24, 24]  # 4 epochs (2, then 2 more) x 6 batches on each rank
    for epoch in range(4):
        per_rank = [[i for batch in trained[r][6 * epoch:6 * epoch + 6] for i in batch] for r in (0, 1)]
        assert per_rank == [list(range(0, 180, 2)), list(range(1, 180, 2))]  # every sample once, 180 dropped
    assert [r[1] for r in first["records"]] == [6, 12] == [r[1] for r in second["records"]]
    assert [r[2:] for r in first["records"]] == [r[2:] for r in second["records"]]

    import tl_testing

    model = tl_testing.Probe(hidden=16, norm=True)
    model.load_state_dict(first["state"])
    from tuneloop.metrics import accuracy

    one = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), None, torch.nn.CrossEntropyLoss(),
                  metrics={"accuracy": accuracy})
    val_loss, metrics = one.val_epoch(make_loader(Samples(val), 10, False, 0, "cpu"), 0)
    assert first["records"][-1][2] == pytest.approx(val_loss, rel=1e-6, abs=0)
    assert first["records"][-1][3] == pytest.approx(metrics["val_accuracy"], rel=1e-6, abs=0)
    assert first["lone"][0] == second["lone"][0] == pytest.approx(first["lone"][1], rel=1e-6)
    assert first["more"] == second["more"]
