"""scikit-learn's diabetes regression data (ships with scikit-learn) and an MLP regressor."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tuneloop.recipes.cache import cached_split
from tuneloop.recipes.digits import mlp


def load_data(val_fraction: float = 0.2, split_seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) TensorDatasets: 10 standardized features, target standardized (shape [N, 1])
    (standardized with the train split's statistics; cached: `tuneloop.recipes.cache`)."""

    def split() -> dict[str, torch.Tensor]:
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split

        x, y = load_diabetes(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=split_seed)
        x_mean, x_std = x_train.mean(0), x_train.std(0)
        y_mean, y_std = y_train.mean(), y_train.std()

        def features(values):
            return torch.tensor((values - x_mean) / x_std, dtype=torch.float32)

        def target(values):
            return torch.tensor((values - y_mean) / y_std, dtype=torch.float32).unsqueeze(1)

        return {"x_train": features(x_train), "y_train": target(y_train),
                "x_val": features(x_val), "y_val": target(y_val)}

    return cached_split("diabetes", val_fraction, split_seed, split)


class MLPRegressor(nn.Module):
    """Regressor for the 10 diabetes features: one output."""

    def __init__(self, hidden: int = 64, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(10, 1, hidden, layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
