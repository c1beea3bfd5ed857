import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tuneloop.data import TensorBatches, make_loader


def epoch_order(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_shuffled_batches_cover_each_sample_once_and_are_reproducible():
    x, y = torch.arange(50).float().unsqueeze(1), torch.arange(50)
    loader = TensorBatches(x, y, 8, shuffle=True, seed=1)
    assert len(loader) == 7
    first = epoch_order(loader, 0)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert epoch_order(loader, 0) == first  # same (seed, epoch) → same order
    assert epoch_order(loader, 1) != first
    assert epoch_order(TensorBatches(x, y, 8, shuffle=True, seed=1), 1) == epoch_order(loader, 1)
    for inputs, targets in loader:
        assert torch.equal(inputs.squeeze(1).long(), targets)  # pairs stay together


def test_unshuffled_keeps_order_and_last_partial_batch():
    x, y = torch.randn(10, 2), torch.arange(10)
    sizes = [len(t) for _, t in TensorBatches(x, y, 4)]
    assert sizes == [4, 4, 2]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        TensorBatches(torch.randn(5, 2), torch.arange(4), 2)


def test_make_loader_picks_tensor_batches_or_a_dataloader():
    assert isinstance(make_loader(TensorDataset(torch.randn(4, 2), torch.arange(4)), 2, True, 0, "cpu"),
                      TensorBatches)

    class Squares(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.tensor([float(i)]), torch.tensor(i * i)

    loader = make_loader(Squares(), 4, False, 0, "cpu")
    assert isinstance(loader, DataLoader) and [len(t) for _, t in loader] == [4, 2]
