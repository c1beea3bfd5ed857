"""The recipes' scikit-learn data (digits, diabetes): scikit-learn's split, cached, so that a
process that loads it again does not import scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tuneloop.recipes import diabetes, digits
from tuneloop.recipes.cache import CACHE_ENV, cache_path


def sklearn_digits(val_fraction: float, split_seed: int) -> list[torch.Tensor]:
    """The digits split made directly with scikit-learn: [x_train, y_train, x_val, y_val]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=split_seed,
                                                      stratify=y)
    return [x_train, y_train, x_val, y_val]


def sklearn_diabetes(val_fraction: float, split_seed: int) -> list[torch.Tensor]:
    """The diabetes split made directly with scikit-learn, standardized with the train statistics."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=split_seed)
    mean, std = x_train.mean(0), x_train.std(0)
    scale = (y_train.mean(), y_train.std())
    return [torch.tensor((x_train - mean) / std, dtype=torch.float32),
            torch.tensor((y_train - scale[0]) / scale[1], dtype=torch.float32).unsqueeze(1),
            torch.tensor((x_val - mean) / std, dtype=torch.float32),
            torch.tensor((y_val - scale[0]) / scale[1], dtype=torch.float32).unsqueeze(1)]


RECIPES = {"digits": (digits.load_data, sklearn_digits, (1437, 360)),
           "diabetes": (diabetes.load_data, sklearn_diabetes, (353, 89))}


def tensors(datasets) -> list[torch.Tensor]:
    train, val = datasets
    return [*train.tensors, *val.tensors]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name", RECIPES)
def test_the_cached_split_is_scikit_learns_and_is_read_back(cache_dir, name):
    load, reference_of, sizes = RECIPES[name]
    reference = reference_of(0.2, 0)
    first = tensors(load())
    path = cache_path(name, (0.2, 0))
    assert path.parent == cache_dir and path.is_file()
    assert same(first, reference)
    assert same(tensors(load()), reference)  # read back from the file
    assert (len(first[0]), len(first[2])) == sizes
    other = tensors(load(val_fraction=0.25, split_seed=3))  # another split: its own file
    assert cache_path(name, (0.25, 3)) != path and cache_path(name, (0.25, 3)).is_file()
    assert same(other, reference_of(0.25, 3)) and not same(other, reference)


def test_a_process_with_the_split_cached_does_not_import_scikit_learn(cache_dir):
    digits.load_data()
    code = ("import sys; from tuneloop.recipes.digits import load_data; train, val = load_data(); "
            "print(len(train), len(val), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["1437", "360", "False"]


def test_a_damaged_cache_file_is_made_again(cache_dir):
    path = cache_path("digits", (0.2, 0))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    reference = sklearn_digits(0.2, 0)
    assert same(tensors(digits.load_data()), reference)
    rewritten = torch.load(path, weights_only=True)  # whole again: the next load reads it
    assert same([rewritten[key] for key in ("x_train", "y_train", "x_val", "y_val")], reference)


def test_without_a_writable_cache_directory_the_data_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # under a file: cannot be made
    assert same(tensors(digits.load_data()), sklearn_digits(0.2, 0))
    assert not (blocker / "cache").exists()
