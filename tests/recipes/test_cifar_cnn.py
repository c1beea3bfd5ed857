"""experiments/cifar_cnn.yaml end to end through the real `tuneloop` command: a small ResNet with
BatchNorm on CIFAR-shaped synthetic images, served by a map-style Dataset with a random transform
through DataLoader workers and a collate function."""

from __future__ import annotations

import pytest
import torch

from tl_recipes import REPO, check_interrupted_sweep, check_train_and_resume, check_validate
from tuneloop.recipes.cifar_cnn import CLASSES, ResNet, collate, load_data

EXPERIMENT = REPO / "experiments" / "cifar_cnn.yaml"
CHANCE = 1 / CLASSES
SMALL = {"run.data_config.n_train": "1024", "run.data_config.n_val": "256"}


def test_data_is_deterministic_augmented_and_collated():
    train, val = load_data(n_train=64, n_val=32, seed=3)
    again, _ = load_data(n_train=64, n_val=32, seed=3)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert train.images.dtype == torch.uint8 and train.images.shape == (64, 3, 32, 32)
    assert not torch.equal(load_data(n_train=64, n_val=32, seed=4)[0].images, train.images)
    assert set(train.labels.tolist()) <= set(range(CLASSES)) and len(set(train.labels.tolist())) > 5
    torch.manual_seed(0)
    views = {tuple(train[0][0].flatten()[:64].tolist()) for _ in range(20)}  # flipped or not, at random
    assert len(views) == 2
    assert len({tuple(val[0][0].flatten().tolist()) for _ in range(5)}) == 1  # val: no augmentation
    images, labels = collate([train[i] for i in range(8)])
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == train.labels[:8].tolist()
    pixels = collate([train[i] for i in range(64)])[0]  # normalised per channel with the train statistics
    assert pixels.mean(dim=(0, 2, 3)).abs().max() < 0.1 and (pixels.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1


def test_resnet_shapes_and_backward():
    model = ResNet(width=8, blocks=2, stages=3)
    images, labels = collate([load_data(n_train=16, n_val=4)[0][i] for i in range(16)])
    logits = model(images)
    assert logits.shape == (16, CLASSES)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
def test_cifar_cnn_validate_train_resume_and_sweep(tmp_path, ray_tmp, shared_ray, capsys):
    check_validate(EXPERIMENT, capsys, "(64, 3, 32, 32) float32", "2048 train / 512 val samples")
    # 2 DataLoader workers draw the random flips: a resumed run repeats them exactly
    check_train_and_resume(EXPERIMENT, tmp_path, capsys, SMALL, epochs=4, interrupt_at=2, better_than=2 * CHANCE)
    check_interrupted_sweep(
        EXPERIMENT, tmp_path, ray_tmp, shared_ray, capsys,
        {**SMALL, "sweep.search_space.optimizer_config.lr.low": "0.02"},  # rates that learn within 3 epochs
        name="cifar_cnn", trials=4, epochs=3, interrupt_after_epochs=2, better_than=2 * CHANCE)
