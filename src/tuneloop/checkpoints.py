"""Checkpoint contents (collect and restore the full training state) and the standalone layout.

A checkpoint is one file `state.pt` holding: format version, epoch, config hash, model,
optimizer, LR scheduler, the fp16 loss scaler (None under fp32/bf16), the `state_dict()` of every stateful callback (EarlyStopping,
LossPrediction, OverfitDetection, ...), the RNG states (python, numpy, torch CPU and CUDA) as
CPU tensors, and the epoch's record with the stop reason the run had then (so a run restored
from the checkpoint of its own last epoch knows it had ended, and what it reported), so that
`torch.load(weights_only=True)` can read it back.

Writing need not stall training: `HostCopy` takes the state into host memory at once, and a
`BackgroundWriter` serializes and writes it while the next epoch trains (CheckpointCallback). A
`state.pt` appears whole or not at all (written under a hidden temporary name, then renamed), so a
checkpoint directory whose write was cut off holds no `state.pt` and reads as damaged.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tuneloop._io import atomic_write, atomic_write_bytes, write_synced
from tuneloop.ranks import unwrapped

FORMAT_VERSION = 1
STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, other format or other experiment."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that is missing, truncated or corrupt (an older one may still be intact)."""


def config_hash(config: dict) -> str:
    """A stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- RNG states as tensors ---------------------------------------------------------------

def rng_state() -> dict:
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(mt_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Put back the states `rng_state()` took. The tensors may have been loaded onto another
    device (`load_state(map_location="cuda")`): they are brought back to the CPU first."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].cpu().tolist()),
                     state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][: torch.cuda.device_count()]])


# --- the training state --------------------------------------------------------------------

def _stateful_callbacks(trainer) -> dict:
    """Callbacks with a state_dict, keyed by class name (with an index when a class repeats)."""
    named, seen = {}, {}
    for callback in trainer.callbacks:
        if not (hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")):
            continue
        name = type(callback).__name__
        seen[name] = seen.get(name, 0) + 1
        named[name if seen[name] == 1 else f"{name}#{seen[name]}"] = callback
    return named


def collect_state(trainer, epoch: int, cfg_hash: str = "", val_loss: float | None = None,
                  record: dict | None = None, stop_reason: str | None = None) -> dict:
    """Everything needed to continue after `epoch` exactly as if never interrupted.

    Taken at `on_epoch_end`, before the Trainer steps the LR scheduler for `epoch`; `val_loss` is
    that epoch's, which a metric-driven schedule (ReduceLROnPlateau) needs to take that step.
    `record` is the epoch's record (`trainer.epoch_record`) and `stop_reason` the reason training
    ends after this epoch, if it does (see `ended`).
    """
    return {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "config_hash": cfg_hash,
        "val_loss": None if val_loss is None else float(val_loss),
        "record": dict(record or {}),
        "stop_reason": stop_reason or "",
        "model": unwrapped(trainer.model).state_dict(),  # without DDP's `module.`: 1 and N workers share checkpoints
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "callbacks": {name: cb.state_dict() for name, cb in _stateful_callbacks(trainer).items()},
        "rng": rng_state(),
    }


def restore_state(trainer, state: dict) -> int:
    """Load `state` into the trainer and its callbacks; return the next epoch to train.

    The checkpoint was taken at `on_epoch_end`, before the LR scheduler stepped for that
    epoch, so the scheduler is stepped here as the Trainer would have (ReduceLROnPlateau with
    the epoch's val_loss) to put the next epoch's LR in place.
    """
    unwrapped(trainer.model).load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and trainer.scaler.is_enabled():  # a checkpoint of another precision has none
        trainer.scaler.load_state_dict(state["scaler"])
    callbacks = _stateful_callbacks(trainer)
    for name, callback_state in state["callbacks"].items():
        if name in callbacks:
            callbacks[name].load_state_dict(callback_state)
    scheduler = trainer.scheduler
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
        with warnings.catch_warnings():  # "step() before optimizer.step()": intended, see above
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if state.get("val_loss") is None:
                    raise CheckpointError("a ReduceLROnPlateau schedule needs the epoch's val_loss, "
                                          "which this checkpoint does not hold")
                scheduler.step(state["val_loss"])
            else:
                scheduler.step()
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def ended(state: dict, epochs: int) -> str:
    """Why the run whose checkpoint is `state` had already ended at that epoch ("complete" after
    its last of `epochs`, or the stop it made then: "early_stopping", ...), or "" when it goes on.
    A run restored from such a checkpoint has nothing left to train."""
    if state.get("stop_reason"):
        return str(state["stop_reason"])
    return "complete" if int(state["epoch"]) >= epochs - 1 else ""


# --- files -----------------------------------------------------------------------------------

def serialize_state(state: dict) -> memoryview:
    """`state` as the bytes of `state.pt` (torch's zip format)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def save_state(state: dict, directory: Path, durable: bool = True) -> Path:
    """Write `state` as `directory/state.pt` atomically; returns the file's path.

    The state is serialized before anything is written, so a state that cannot be saved leaves
    the disk as it was. A new directory appears complete (built under a hidden temporary name,
    then renamed), so no reader ever sees a checkpoint directory without its `state.pt`; in an
    existing directory the file is replaced atomically. `durable=False` writes straight into
    `directory` without flushing to disk: for a staging copy that is read back at once (by Tune).
    """
    directory = Path(directory)
    if not durable:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(state, directory / STATE_FILE)
        return directory / STATE_FILE
    data = serialize_state(state)

    def write(target: Path) -> None:
        with open(target, "wb") as handle:
            write_synced(handle, data)

    _publish(directory, write, lambda: atomic_write_bytes(directory / STATE_FILE, data))
    return directory / STATE_FILE


def write_state_into(state: dict, directory: Path) -> Path:
    """Make `directory/state.pt` hold `state`, creating the directory if needed: the file appears
    whole or not at all (`atomic_write`), and is not flushed to disk (fsync) — as Ray's own copy of
    a reported checkpoint into the storage. Returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def write(handle) -> None:
        try:
            torch.save(state, handle)
        except RuntimeError as exc:
            # a failed write (disk full, ...) comes out of torch as its own error about the file's
            # position, raised while the OSError was handled: the OSError says what happened
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise

    atomic_write(directory / STATE_FILE, write, durable=False)
    return directory / STATE_FILE


def _publish(directory: Path, write, replace) -> None:
    """Make `directory/state.pt`: in an existing directory `replace()` swaps the file atomically;
    otherwise `write(path)` fills a hidden staging directory that is then renamed to `directory`."""
    if directory.is_dir():
        replace()
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        write(staging / STATE_FILE)
        try:
            os.rename(staging, directory)
        except OSError:
            if not directory.is_dir():  # not a lost race with another writer of this directory
                raise
            replace()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if staging.exists():  # lost the race above: the directory was written in place
        shutil.rmtree(staging, ignore_errors=True)


def load_state(directory: Path, expected_hash: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint directory with `weights_only=True` and check version and config hash."""
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: checkpoint file does not exist") from None
    except Exception as exc:
        raise DamagedCheckpoint(f"{path}: cannot read checkpoint (truncated or corrupt?): {exc}") from exc
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {FORMAT_VERSION} expected, but got {version!r}")
    if expected_hash is not None and state.get("config_hash") != expected_hash:
        raise CheckpointError(
            f"{path}: written by another experiment (config hash {state.get('config_hash')!r}, "
            f"expected {expected_hash!r})")
    return state


EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


class CheckpointManager:
    """The standalone layout under `root`: `epoch_<N>/` periodic checkpoints and `best/`.

    Periodic checkpoints beyond the last `keep_last_k` (by epoch number) are deleted;
    `best/` is replaced when the monitored value improves (`mode` min or max).
    """

    def __init__(self, root: Path, keep_last_k: int = 3, mode: str = "min", durable: bool = True):
        self.root = Path(root)
        self.durable = durable
        self.keep_last_k = keep_last_k
        self.mode = mode
        self.best_value: float | None = None

    def periodic(self) -> list[tuple[int, Path]]:
        """(epoch, directory) of the periodic checkpoints, oldest first, by epoch number."""
        if not self.root.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := EPOCH_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
        return sorted(found)

    def latest(self) -> Path | None:
        periodic = self.periodic()
        return periodic[-1][1] if periodic else None

    def save_periodic(self, state: dict, epoch: int) -> Path:
        directory = self.root / f"epoch_{epoch}"
        save_state(state, directory, self.durable)
        for _, old in self.periodic()[: -self.keep_last_k or None]:
            shutil.rmtree(old, ignore_errors=True)
        return directory

    def is_better(self, value: float) -> bool:
        if value != value:  # NaN is never better
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def save_best(self, state: dict, value: float, written: Path | None = None) -> Path:
        """Make `best/state.pt` this state, whose monitored value is `value`; `written` is the same
        state already saved (then it is hard-linked, atomically, instead of serialized and written again)."""
        self.best_value = float(value)
        return self.write_best(state, written)

    def write_best(self, state: dict, written: Path | None = None) -> Path:
        """`save_best` without updating `best_value` (which its caller has set)."""
        directory = self.root / "best"
        if written is None:
            save_state(state, directory)
            return directory
        try:
            _publish(directory, lambda target: os.link(written, target),
                     lambda: _replace_with_link(written, directory / STATE_FILE))
        except OSError:  # a file system without hard links: write the state again
            save_state(state, directory)
        return directory


def _replace_with_link(source: Path, target: Path) -> None:
    """Atomically make `target` a hard link to `source` (a new name, then renamed over `target`)."""
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    os.link(source, temporary)
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- writing in the background ---------------------------------------------------------------

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


class HostCopy:
    """Copies a state into host memory at once, so that it can be written while training goes on.

    Containers are rebuilt and other values deep-copied, so no later change to the live objects
    reaches the copy. Tensors are copied into buffers kept from one call to the next (a copy into
    warm memory costs a fraction of a fresh allocation's page faults); so the previous copy must
    be written before the next call. CUDA tensors are copied into pinned buffers without waiting
    for the GPU: call the returned `ready()` before reading the copy.
    """

    def __init__(self):
        self._buffers: dict[tuple, tuple[torch.Tensor, bool]] = {}  # where in the state → (buffer, pinned)

    def __call__(self, state: Any) -> tuple[Any, Callable[[], None]]:
        memo: dict[int, torch.Tensor] = {}
        devices: set[torch.device] = set()
        copied = self._copy(state, (), memo, devices)
        events = []
        for device in devices:  # one event per GPU: the copies are queued on its current stream
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)

        def ready() -> None:
            for event in events:
                event.synchronize()

        return copied, ready

    def _copy(self, value: Any, key: tuple, memo: dict, devices: set) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) not in memo:  # one tensor under two names (tied weights) stays one
                memo[id(value)] = self._tensor(value, key, devices)
            return memo[id(value)]
        if isinstance(value, dict):
            copied = type(value)() if type(value) in (dict, collections.OrderedDict) else {}
            for name, item in value.items():
                copied[name] = self._copy(item, (*key, name), memo, devices)
            if isinstance(copied, collections.OrderedDict) and hasattr(value, "_metadata"):
                copied._metadata = copy.deepcopy(value._metadata)
            return copied
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            return type(value)(self._copy(item, (*key, index), memo, devices) for index, item in enumerate(value))
        return value if isinstance(value, _IMMUTABLE) else copy.deepcopy(value)

    def _tensor(self, tensor: torch.Tensor, key: tuple, devices: set) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.layout != torch.strided or tensor.device.type not in ("cpu", "cuda"):
            return tensor.to("cpu", copy=True)  # sparse, quantized, other devices: a plain copy
        pinned = tensor.device.type == "cuda"
        buffer, was_pinned = self._buffers.get(key, (None, False))
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype or was_pinned != pinned:
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=pinned)
            self._buffers[key] = (buffer, pinned)
        buffer.copy_(tensor, non_blocking=pinned)
        if pinned:
            devices.add(tensor.device)
        return buffer


class BackgroundWriter:
    """Runs one write at a time in a background thread. A failed write's error is raised (with a
    note) by the next `start`, `wait` or `raise_failure`, in the training thread."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, write: Callable[[], Any], what: str) -> None:
        """Wait for the write in flight (raising its error), then run `write()` in the background."""
        self.wait()

        def run():
            try:
                write()
            except BaseException as exc:  # handed to the training thread
                exc.add_note(f"raised by the background write of {what}")
                self._error = exc

        self._thread = threading.Thread(target=run, name="tuneloop-checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise the error of a finished write that failed (once); a write in flight is left alone."""
        if self._thread is not None and self._thread.is_alive():
            return
        error, self._error = self._error, None
        if error is not None:
            raise error
