"""Batches of any structure: every tensor moved, containers kept, samples counted, described."""

from __future__ import annotations

import collections
import dataclasses
from collections import UserDict

import pytest
import torch

from tuneloop.batches import describe, map_tensors, sample_count, tensors, to_device

Pair = collections.namedtuple("Pair", "inputs targets")


@dataclasses.dataclass
class Example:
    pixels: torch.Tensor
    label: torch.Tensor
    note: str = "x"


class Encoding(UserDict):
    """A mapping that is not a dict, like Hugging Face's BatchEncoding."""


BATCHES = {
    "pair": (torch.ones(4, 3), torch.zeros(4)),
    "list of three": [torch.ones(4, 3), torch.zeros(4), torch.ones(4, 2)],
    "dict": {"input_ids": torch.ones(4, 7, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)},
    "mapping": Encoding(input_ids=torch.ones(4, 7), attention_mask=torch.ones(4, 7)),
    "namedtuple": Pair(torch.ones(4, 3), torch.zeros(4)),
    "dataclass": Example(torch.ones(4, 3, 8, 8), torch.zeros(4)),
    "nested": {"text": {"ids": torch.ones(4, 5)}, "extra": [torch.zeros(4), "meta"]},
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_every_tensor_is_mapped_and_each_container_keeps_its_type(name):
    batch = BATCHES[name]
    doubled = map_tensors(batch, lambda t: t * 2)
    assert type(doubled) is type(batch)
    assert len(tensors(doubled)) == len(tensors(batch)) > 0
    for before, after in zip(tensors(batch), tensors(doubled)):
        assert torch.equal(after, before * 2)
    assert sample_count(batch) == 4
    moved = to_device(batch, torch.device("cpu"))
    assert all(a is b for a, b in zip(tensors(moved), tensors(batch)))  # already there: not copied


def test_non_tensors_are_left_alone():
    batch = {"ids": torch.ones(2), "name": "abc", "n": 3}
    assert map_tensors(batch, lambda t: t + 1)["name"] == "abc"
    assert Example(torch.ones(1), torch.ones(1), note="kept").note == map_tensors(
        Example(torch.ones(1), torch.ones(1), note="kept"), lambda t: t).note


def test_the_sample_count_comes_from_the_targets_when_given():
    batch = {"ids": torch.ones(8, 3), "labels": torch.zeros(6)}
    assert sample_count(batch) == 8
    assert sample_count(batch, targets=batch["labels"]) == 6
    with pytest.raises(ValueError, match="at least one tensor"):
        sample_count({"text": "no tensors"})


def test_describe_shows_shapes_of_every_structure():
    assert describe(torch.ones(2, 3)) == "shape (2, 3) float32"
    assert describe(BATCHES["dict"]) == "{input_ids: shape (4, 7) int64, labels: shape (4,) int64}"
    assert describe(BATCHES["pair"]) == "(shape (4, 3) float32, shape (4,) float32)"
    assert describe(BATCHES["dataclass"]).startswith("Example(pixels=shape (4, 3, 8, 8) float32")
    assert describe("text") == "type str"
