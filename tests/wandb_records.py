"""Read the records of a wandb offline run file (`run-<id>.wandb`).

The file is a LevelDB-style log: a 7-byte header (`:W&B`, magic 0xBEE1 little-endian, version 0),
then 32 KiB blocks of records, each with a 7-byte header (crc32, length u16, type u8: FULL=1,
FIRST=2, MIDDLE=3, LAST=4) and a payload; the payloads put together are serialized
`wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic, version)
    out, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        if kind == 0 and length == 0:
            offset += left_in_block
            continue
        payload = data[offset + HEADER: offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def history(path: str | Path, at_least: int = 1, timeout: float = 15.0) -> list[dict]:
    """The logged rows, keys as logged (internal `_step`, `_runtime`, `_timestamp` dropped).

    wandb's service may still be appending to the file just after `finish()` returns: wait (up to
    `timeout` s) until the run's exit record and `at_least` rows are there.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = records(path)
        rows = _rows(found)
        done = any(r.WhichOneof("record_type") == "exit" for r in found)
        if (done and len(rows) >= at_least) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def _rows(found) -> list[dict]:
    rows = []
    for record in found:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def summary(path: str | Path) -> dict:
    values = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def run_file(wandb_dir: str | Path) -> Path:
    files = sorted(Path(wandb_dir).glob("**/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]
