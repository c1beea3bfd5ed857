"""The example recipes' scikit-learn data, split once and then read from a cache file.

Importing scikit-learn costs every process that loads the data (a sweep's preflight, each trial's
worker) more than a second on a small machine; a cached split is read back without it. A cache
file is named by the data, the split's parameters and the installed scikit-learn and NumPy
versions, so that it always holds what scikit-learn would make.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import TensorDataset

from tuneloop._io import atomic_write

CACHE_ENV = "TUNELOOP_CACHE_DIR"  # default: $XDG_CACHE_HOME/tuneloop, else ~/.cache/tuneloop


def cached_split(name: str, val_fraction: float, split_seed: int,
                 make: Callable[[], dict[str, torch.Tensor]]) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) TensorDatasets of `make()`'s `x_train`, `y_train`, `x_val` and `y_val`, cached
    for data `name` split by (`val_fraction`, `split_seed`) (`cached_tensors`)."""
    t = cached_tensors(name, (float(val_fraction), int(split_seed)), make)
    return TensorDataset(t["x_train"], t["y_train"]), TensorDataset(t["x_val"], t["y_val"])


def cached_tensors(name: str, params: tuple, make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`make()`'s tensors, read from this data's cache file when it holds them whole, else made and
    cached (atomically: processes that make them at once each write a whole file; nothing is cached
    where the cache directory cannot be written)."""
    path = cache_path(name, params)
    if path is not None:
        try:
            tensors = torch.load(path, weights_only=True)
            if isinstance(tensors, dict):
                return tensors
        except Exception:  # noqa: BLE001 - missing, unreadable or damaged: made again and rewritten
            pass
    tensors = make()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda handle: torch.save(tensors, handle), durable=False)
        except OSError:
            pass
    return tensors


def cache_path(name: str, params: tuple) -> Path | None:
    """The cache file of data `name` split by `params` (None: scikit-learn is not installed, or no
    cache directory can be named)."""
    try:
        versions = (metadata.version("scikit-learn"), metadata.version("numpy"))
    except metadata.PackageNotFoundError:
        return None
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        if base.startswith("~"):  # no home directory
            return None
        root = os.path.join(base, "tuneloop")
    key = hashlib.sha256(repr((name, *versions, *params)).encode()).hexdigest()[:16]
    return Path(root) / f"{name}-{key}.pt"
