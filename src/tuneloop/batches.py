"""Batches of any structure: moved to a device, counted, described in messages.

A batch may be a tensor, a pair `(inputs, targets)`, a tuple or list of any length, a dict or
another mapping (Hugging Face's `BatchEncoding`), a namedtuple or a dataclass, nested freely.
Every tensor in it moves; everything else is left as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import torch


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """`batch` with `fn` applied to every tensor in it, each container rebuilt as its own type."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        mapped = {key: map_tensors(value, fn) for key, value in batch.items()}
        if type(batch) is dict:
            return mapped
        try:
            return type(batch)(mapped)  # BatchEncoding, OrderedDict, ...: built from a dict
        except Exception:
            return mapped
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_tensors(value, fn) for value in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(value, fn) for value in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {field.name: map_tensors(getattr(batch, field.name), fn)
                   for field in dataclasses.fields(batch) if field.init}
        return dataclasses.replace(batch, **changes)
    return batch


def tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor in `batch`, in the order of its containers."""
    found: list[torch.Tensor] = []
    map_tensors(batch, found.append)
    return found


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor on `device`: non-blocking from pinned memory to an accelerator (a
    non-blocking copy towards the CPU may be read before it has landed)."""

    if type(batch) in (tuple, list) and all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
        return batch  # the common case (in-memory batches already on the device), without rebuilding it

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == device:
            return tensor
        return tensor.to(device, non_blocking=device.type != "cpu" and tensor.is_pinned())

    return map_tensors(batch, move)


def sample_count(batch: Any, targets: Any = None) -> int:
    """How many samples a batch holds: the length of `targets` when given, else the leading
    dimension of the first tensor in `batch` (a shape, read without a device sync)."""
    source = batch if targets is None else targets
    first = source if isinstance(source, torch.Tensor) else next(iter(tensors(source)), None)  # (a tensor: at once)
    if first is not None:
        return int(first.shape[0]) if first.dim() else 1
    if targets is not None:
        return len(targets)
    raise ValueError(f"a batch must hold at least one tensor, but got a {type(batch).__name__}")


def describe(value: Any) -> str:
    """A value as messages show it: `shape (16, 3) float32`, `{input_ids: shape (16, 32) int64, ...}`,
    `(shape (16, 64) float32, shape (16,) int64)`, or `type str`."""
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {describe(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value):
        inner = ", ".join(describe(item) for item in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={describe(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__name__}({inner})"
    return f"type {type(value).__name__}"
