"""Several processes training one model together (data parallel), without Ray: which rank this
process is, sums over every rank at the end of an epoch, one stop for all ranks, the DDP wrapper,
each rank's share of the data (indices of a map-style dataset, samples of a stream).

A run is data-parallel when `torch.distributed` is initialized with more than one process (a Ray
Train worker group: `tuneloop.tune.distributed`; `torchrun` works the same). Otherwise every
function here is the identity of one process, and nothing is synchronised. The hot loops never
sync: each rank sums its own losses on its device, and the sums meet once per epoch.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch


def process_group() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def summed(world_size: int, sums: torch.Tensor, *counts: int) -> tuple:
    """`(sums, *counts)` added up over every rank: one all_reduce of one float64 tensor. With
    `world_size` 1 they come back as they are (a one-process run's numbers stay bitwise the same)."""
    if world_size == 1:
        return (sums, *counts)
    import torch.distributed as dist

    flat = sums.detach().reshape(-1).to(torch.float64)
    total = torch.cat([flat, torch.tensor(counts, dtype=torch.float64, device=flat.device)])
    dist.all_reduce(total)
    return (total[:flat.numel()].reshape(sums.shape), *(int(c) for c in total[flat.numel():].tolist()))


def agreed_stop(world_size: int, reason: str | None, wins: str = "") -> str | None:
    """The stop every rank takes after this epoch, from each rank's own `reason` (one collective):
    `wins` when any rank gives it, else the first reason in rank order; None when no rank stops.
    With `world_size` 1, `reason` itself."""
    if world_size == 1:
        return reason
    import torch.distributed as dist

    reasons: list[str | None] = [None] * world_size
    dist.all_gather_object(reasons, reason or None)
    found = [r for r in reasons if r]
    if wins and wins in found:
        return wins
    return found[0] if found else None


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel (gradients averaged over the ranks at each
    backward; gloo on CPU, NCCL on CUDA, as the process group was initialized).

    Its buffers (BatchNorm's running statistics) are not broadcast at every forward, as DDP does by
    default, but once before each validation (`share_buffers`): DDP's broadcast is a collective in
    the forward, so a validation pass through DDP would pair only if every rank had the same number
    of batches (none on a rank: a hang). BatchNorm trains as before (a training-mode forward reads
    batch statistics; rank 0's buffers, the ones checkpointed and shared, see rank 0's batches either
    way); a model whose training forward reads other buffers sees, on ranks > 0, their own rank's."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # torch 2.13 renamed broadcast_buffers (deprecated there) to forward_sync_buffers; the range allows 2.6
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=ids, **{no_sync: False})


def share_buffers(world_size: int, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) copied into every rank's `model`: one
    broadcast per dtype, which every rank makes before its validation pass (`Trainer.val_epoch`),
    whatever its number of batches. Nothing with `world_size` 1."""
    if world_size == 1:
        return
    import torch.distributed as dist

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in unwrapped(model).buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for dtype in sorted(by_dtype, key=str):  # the same order on every rank
        buffers = by_dtype[dtype]
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(part.view_as(buffer))


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside a DDP wrapper (checkpoints hold its state, without `module.`
    prefixes, so that runs on 1 and on N workers share checkpoints); any other model as it is."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def shard(indices: torch.Tensor, rank: int, world_size: int, even: bool) -> torch.Tensor:
    """This rank's share of `indices` (every `world_size`-th, from `rank`), as DistributedSampler
    takes it. `even`: every rank gets the same number (the first indices repeated to fill up), so
    that the ranks' training steps, and the DDP all_reduces in them, pair up."""
    if world_size == 1:
        return indices
    if even and len(indices) % world_size:
        extra = world_size - len(indices) % world_size
        indices = torch.cat([indices, indices[:extra]])
    return indices[rank::world_size]


def split_stream(samples: Iterable, rank: int, world_size: int, even: bool) -> Iterator:
    """This rank's share of a stream, as Accelerate's `IterableDatasetShard` takes it (one sample
    per rank and group): of each group of `world_size` consecutive samples, the `rank`-th. `even`:
    an incomplete last group is dropped (at most `world_size - 1` samples a pass), so that every
    rank yields the same number (training: DDP's steps pair up); else the last group is split as
    far as it goes (validation: each sample on exactly one rank). With `world_size` 1, `samples`."""
    iterator = iter(samples)
    if world_size == 1:
        yield from iterator
        return
    while True:
        group = list(itertools.islice(iterator, world_size))
        if len(group) == world_size or (not even and rank < len(group)):
            yield group[rank]
        if len(group) < world_size:
            return


def stream_share(size: int, rank: int, world_size: int, even: bool) -> int:
    """How many of a stream's `size` samples `split_stream` gives this rank."""
    return size // world_size if even else len(range(rank, size, world_size))
