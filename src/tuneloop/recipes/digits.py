"""scikit-learn's 8x8 handwritten digits (ships with scikit-learn: no download) and an MLP for them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tuneloop.recipes.cache import cached_split


def load_data(val_fraction: float = 0.2, split_seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) TensorDatasets of 64 pixel features scaled to [0, 1] and int64 class labels
    (scikit-learn's stratified split, cached: `tuneloop.recipes.cache`)."""

    def split() -> dict[str, torch.Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.int64)
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_fraction, random_state=split_seed, stratify=y)
        return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}

    return cached_split("digits", val_fraction, split_seed, split)


def mlp(in_features: int, out_features: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """`layers` hidden Linear+ReLU+Dropout blocks of width `hidden`, then a Linear head."""
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    blocks.append(nn.Linear(width, out_features))
    return nn.Sequential(*blocks)


class MLP(nn.Module):
    """Classifier for the 64-pixel digits: 10 logits."""

    def __init__(self, hidden: int = 128, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.net = mlp(64, 10, hidden, layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
