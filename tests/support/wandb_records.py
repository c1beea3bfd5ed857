"""Read what a wandb offline run wrote: the records of `wandb/offline-run-*/run-<id>.wandb`.

wandb 0.31 (its Go core writes the file) uses a LevelDB-style log:

    header := ident ":W&B" (4 bytes) | magic 0xBEE1 (uint16, little-endian) | version 0 (uint8)
    then 32 KiB blocks; a block is a sequence of records and maybe a zero trailer (< 7 bytes):
    record := crc32 (uint32 LE) | length (uint16 LE) | type (uint8) | data[length]
              crc32 = zlib.crc32 of the type byte followed by the data
              type: FULL=1 (a whole message), FIRST=2, MIDDLE=3, LAST=4 (a message split across
              blocks); a record never starts in the last 6 bytes of a block

The data of a FULL record, or of FIRST + MIDDLE* + LAST put together, is one serialized
`wandb.proto.wandb_internal_pb2.Record` (run, history, summary, exit, ... records). Every
checksum, length and fragment sequence is checked: a damaged file raises `CorruptRunFile`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptRunFile(ValueError):
    """The file is not a complete, well-formed wandb run log."""


def chunks(path: str | Path) -> list[tuple[int, int, bytes]]:
    """The checked log records of the file as (offset, type, payload); a torn tail is left out."""
    data = Path(path).read_bytes()
    if len(data) < HEADER:
        raise CorruptRunFile(f"{path}: {len(data)} bytes, shorter than the {HEADER}-byte header")
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise CorruptRunFile(f"{path}: header {ident!r} {magic:#x} v{version}, "
                             f"expected {IDENT!r} {MAGIC:#x} v{VERSION}")
    out = []
    offset = HEADER
    while True:
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:  # the trailer: zero bytes up to the next block
            if data[offset:offset + left_in_block].strip(b"\0"):
                raise CorruptRunFile(f"{path}: non-zero block trailer at byte {offset}")
            offset += left_in_block
            continue
        if offset + HEADER > len(data):
            break  # end of file (possibly a torn record header being written)
        crc, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        if kind == 0 and length == 0 and crc == 0:  # zero padding (preallocated / unwritten space)
            if data[offset:].strip(b"\0"):
                raise CorruptRunFile(f"{path}: data after zero padding at byte {offset}")
            break
        end = offset + HEADER + length
        if end > len(data):
            break  # the last record is still being written
        if length > left_in_block - HEADER:
            raise CorruptRunFile(f"{path}: record at byte {offset} crosses its block")
        payload = data[offset + HEADER:end]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            raise CorruptRunFile(f"{path}: checksum mismatch in the record at byte {offset}")
        if kind not in (FULL, FIRST, MIDDLE, LAST):
            raise CorruptRunFile(f"{path}: unknown record type {kind} at byte {offset}")
        out.append((offset, kind, payload))
        offset = end
    return out


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """Every message in the file, in order (FIRST + MIDDLE* + LAST fragments joined)."""
    out: list[wandb_internal_pb2.Record] = []
    pending: list[bytes] | None = None  # fragments of a FIRST..LAST message
    for offset, kind, payload in chunks(path):
        message = None
        if kind == FULL:
            if pending is not None:
                raise CorruptRunFile(f"{path}: FULL record inside a fragmented one at byte {offset}")
            message = payload
        elif kind == FIRST:
            if pending is not None:
                raise CorruptRunFile(f"{path}: FIRST record inside a fragmented one at byte {offset}")
            pending = [payload]
        else:  # MIDDLE or LAST
            if pending is None:
                raise CorruptRunFile(f"{path}: {'MIDDLE' if kind == MIDDLE else 'LAST'} record "
                                     f"without FIRST at byte {offset}")
            pending.append(payload)
            if kind == LAST:
                message, pending = b"".join(pending), None
        if message is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(message)
            out.append(record)
    return out


def kind(record: wandb_internal_pb2.Record) -> str:
    return record.WhichOneof("record_type")


def _items(items) -> dict:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def history(path: str | Path) -> list[dict]:
    """One dict per `log` call, keys as logged (wandb's own `_step`, `_runtime`, `_timestamp` dropped)."""
    return [{k: v for k, v in _items(r.history.item).items() if not k.startswith("_")}
            for r in records(path) if kind(r) == "history"]


def summary(path: str | Path) -> dict:
    """The run's summary: the summary records' updates applied in order (removals honoured)."""
    values: dict = {}
    for record in records(path):
        if kind(record) == "summary":
            values.update(_items(record.summary.update))
            for item in record.summary.remove:
                values.pop(item.key or "/".join(item.nested_key), None)
    return values


def run_record(path: str | Path) -> wandb_internal_pb2.RunRecord:
    """The run record (id, project, group, name, config) the run was started with."""
    runs = [r.run for r in records(path) if kind(r) == "run"]
    assert runs, f"{path}: no run record"
    return runs[0]


def config(path: str | Path) -> dict:
    return {k: v for k, v in _items(run_record(path).config.update).items() if k != "_wandb"}


def exit_codes(path: str | Path) -> list[int]:
    """The exit codes of the run's exit records: `[code]` once the run was finished, `[]` while open."""
    return [r.exit.exit_code for r in records(path) if kind(r) == "exit"]


def wait_finished(path: str | Path, timeout: float = 20.0) -> int:
    """Wait until the run's exit record is in the file (wandb's service writes it just after
    `finish()` returns) and return the exit code; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        codes = exit_codes(path)
        if codes:
            assert len(codes) == 1, f"{path}: {len(codes)} exit records"
            return codes[0]
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.05)


def run_files(wandb_dir: str | Path, expect: int | None = None, timeout: float = 20.0) -> list[Path]:
    """The offline run files under `wandb_dir` (its `wandb/offline-run-*/` folders), oldest first;
    with `expect`, wait (up to `timeout` s) until that many exist: wandb's service creates them."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb"))
        if expect is None or len(files) >= expect or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


def run_file(wandb_dir: str | Path) -> Path:
    """The one offline run file under `wandb_dir`."""
    files = run_files(wandb_dir, expect=1)
    assert len(files) == 1, f"expected one offline run under {wandb_dir}, found {files}"
    return files[0]
