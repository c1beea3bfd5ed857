"""CIFAR-shaped synthetic images (made in code: no download) and a small ResNet for them.

Each of the 10 classes is one of 5 colours times one of 2 stripe patterns, drawn with random
brightness, contrast and Gaussian noise, so telling the classes apart takes both colour and
shape. The images are stored as uint8 N×3×32×32 like CIFAR-10's; `CifarLike` is a map-style
Dataset that applies a transform per sample (random horizontal flip, then per-channel
normalisation), and `collate` stacks the samples into `(images, labels)` batches
(`run.collate_fn: tuneloop.recipes.cifar_cnn.collate`). No torchvision.

The flip draws from torch's global RNG: in a DataLoader worker that RNG is seeded from the
loader's generator (which tuneloop reseeds every epoch), in the training process
(`num_workers: 0`) it is seeded by `run.seed` and kept in checkpoints, so a resumed run sees the
same augmentations either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

CLASSES = 10
SIZE = 32


# --- data ------------------------------------------------------------------------------------

def _patterns() -> torch.Tensor:
    """Two 32×32 patterns in [0, 1], each symmetric under a horizontal flip (the class survives
    the augmentation): horizontal stripes, and concentric rings."""
    coords = torch.arange(SIZE, dtype=torch.float32) - (SIZE - 1) / 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    stripes = 0.5 + 0.5 * torch.cos(2 * math.pi * y / 8)
    rings = 0.5 + 0.5 * torch.cos(2 * math.pi * torch.sqrt(x * x + y * y) / 8)
    return torch.stack([stripes, rings])


def _colours() -> torch.Tensor:
    """Five RGB colours in [0, 1]."""
    return torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.25, 0.35, 0.9], [0.9, 0.85, 0.2], [0.7, 0.3, 0.8]])


def make_images(n: int, generator: torch.Generator, noise: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images (n, 3, 32, 32) and their int64 labels (n,), deterministic in `generator`.
    Label c = 2·colour + pattern. The pattern is shifted by a random offset of up to 3 pixels
    vertically, so stripes are not in one place."""
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    colour = _colours()[labels // 2]                                   # (n, 3)
    pattern = _patterns()[labels % 2]                                  # (n, 32, 32)
    shifts = torch.randint(-3, 4, (n,), generator=generator)
    pattern = torch.stack([p.roll(int(s), dims=0) for p, s in zip(pattern, shifts)])
    brightness = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator)
    images = colour[:, :, None, None] * brightness * (1 - contrast + contrast * pattern[:, None])
    images = images + noise * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


class RandomHorizontalFlip:
    """Flips a C×H×W image left-right with probability `p` (torch's global RNG)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-1) if torch.rand(()) < self.p else image


class Normalize:
    """uint8 C×H×W → float32, scaled to [0, 1], then `(x - mean) / std` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(torch.float32) / 255 - self.mean) / self.std


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class CifarLike(Dataset):
    """A map-style dataset of uint8 images: `dataset[i]` is `(transform(image), label)`, the label a
    plain int (as torchvision's CIFAR10 returns it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        if len(images) != len(labels):
            raise ValueError(f"images and labels must have the same length, but got {len(images)} and {len(labels)}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of `(image, label)` samples → `(images (B, 3, 32, 32) float32, labels (B,) int64)`."""
    images, labels = zip(*samples)
    return torch.stack(images).to(torch.float32), torch.tensor(labels, dtype=torch.int64)


def load_data(n_train: int = 2048, n_val: int = 512, seed: int = 0, augment: bool = True,
              noise: float = 0.4) -> tuple[CifarLike, CifarLike]:
    """(train, val) CifarLike datasets. Train flips at random when `augment`; both are normalised
    with the train split's per-channel mean and std."""
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = make_images(n_train, generator, noise)
    val_images, val_labels = make_images(n_val, generator, noise)
    pixels = train_images.to(torch.float32) / 255
    normalize = Normalize(pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist())
    train_transform = Compose([RandomHorizontalFlip(), normalize]) if augment else normalize
    return CifarLike(train_images, train_labels, train_transform), CifarLike(val_images, val_labels, normalize)


# --- model -----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers and a residual connection (a 1×1 conv + BN when the shape
    changes), as in ResNet-18/34."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 3×32×32 inputs: a 3×3 stem (stride `stem_stride`), `stages` stages of
    `blocks` BasicBlocks (channels width, 2·width, 4·width, ...; each stage after the first halves
    the resolution), global average pooling, dropout and a linear head of `classes` logits."""

    def __init__(self, width: int = 16, blocks: int = 1, stages: int = 2, stem_stride: int = 2,
                 dropout: float = 0.0, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        channels = width
        for stage in range(stages):
            out_channels = width * 2 ** stage
            for block in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride=2 if stage > 0 and block == 0 else 1))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))
