import math
import random

import pytest
import torch

from tuneloop.callbacks import EarlyStoppingCallback, TrainingCallback
from tuneloop.metrics import accuracy
from tuneloop.trainer import Trainer


def feed(callback, values, start=0, key="val_loss"):
    for epoch, value in enumerate(values, start=start):
        metrics = {} if key == "val_loss" else {key: value}
        callback.on_val_end(None, epoch=epoch, val_loss=value if key == "val_loss" else 0.0, metrics=metrics)
    return callback


def decisions(callback, values, start=0):
    out = []
    for epoch, value in enumerate(values, start=start):
        feed(callback, [value], start=epoch)
        out.append((callback.best, callback.best_epoch, callback.wait, callback.should_stop))
    return out


def test_defaults():
    es = EarlyStoppingCallback()
    assert (es.patience, es.mode, es.min_delta, es.monitor) == (20, "min", 1e-4, "val_loss")


def test_relative_threshold_and_patience():
    es = feed(EarlyStoppingCallback(patience=2, min_delta=0.1), [1.0, 0.95, 0.89])
    # 0.95 is within 10% of 1.0 (no improvement), 0.89 improves by 11%
    assert es.best == 0.89 and es.best_epoch == 2 and es.wait == 0 and not es.should_stop
    feed(es, [0.85], start=3)
    assert es.wait == 1 and not es.should_stop and es.stop_reason() is None
    feed(es, [0.84], start=4)
    assert es.should_stop and es.stop_reason() == "early_stopping" and es.best == 0.89


@pytest.mark.parametrize("best, value, min_delta, improves", [
    (1.0, 0.9, 0.1, False),  # exactly at the threshold: not strictly more
    (1.0, 0.8999, 0.1, True),
    (100.0, 99.995, 1e-4, False),  # the threshold is relative: 0.01 needed at 100
    (100.0, 99.98, 1e-4, True),
    (1e-6, 0.5e-6, 1e-4, True),  # tiny losses still improve (an absolute delta would block them)
    (2.0, 2.0, 0.0, False),  # a tie is not an improvement even with min_delta 0
    (2.0, 1.9999999, 0.0, True),
    (-1.0, -1.05, 0.1, False),  # negative: 0.05 ≤ 0.1·|−1|
    (-1.0, -1.2, 0.1, True),
    (0.0, -1e-12, 0.5, True),  # at zero any strict improvement counts
    (0.0, 0.0, 0.0, False),
    (0.0, 1e-9, 0.5, False),
])
def test_improves_min(best, value, min_delta, improves):
    es = EarlyStoppingCallback(patience=5, min_delta=min_delta)
    es.best = best
    assert es.improves(value) is improves


@pytest.mark.parametrize("best, value, min_delta, improves", [
    (0.8, 0.88, 0.1, False),
    (0.8, 0.8801, 0.1, True),
    (0.5, 0.5, 0.0, False),
    (-2.0, -1.9, 0.1, False),  # gain 0.1 ≤ 0.1·|−2| = 0.2
    (-2.0, -1.7, 0.1, True),
    (0.0, 1e-12, 0.5, True),
    (0.0, -1e-12, 0.5, False),
])
def test_improves_max_is_mirrored(best, value, min_delta, improves):
    es = EarlyStoppingCallback(patience=5, mode="max", min_delta=min_delta)
    es.best = best
    assert es.improves(value) is improves


def test_the_first_finite_value_is_the_best():
    assert EarlyStoppingCallback().improves(123.0)
    assert EarlyStoppingCallback(mode="max").improves(-5.0)


def test_ties_are_not_improvements():
    es = feed(EarlyStoppingCallback(patience=3, min_delta=0.0), [0.5, 0.5, 0.5, 0.5])
    assert es.best_epoch == 0 and es.wait == 3 and es.should_stop


def test_patience_counts_consecutive_epochs_without_improvement():
    es = EarlyStoppingCallback(patience=3, min_delta=0.0)
    got = decisions(es, [1.0, 1.1, 1.2, 0.9, 0.95, 0.95, 0.91])
    assert [d[2] for d in got] == [0, 1, 2, 0, 1, 2, 3]  # an improvement resets the count
    assert [d[3] for d in got] == [False] * 6 + [True]  # stops at exactly `patience`
    assert es.best == 0.9 and es.best_epoch == 3


def test_patience_one_stops_at_the_first_non_improvement():
    es = EarlyStoppingCallback(patience=1, min_delta=0.0)
    assert [d[3] for d in decisions(es, [3.0, 2.0, 1.0, 1.0])] == [False, False, False, True]


def test_negative_losses():
    es = feed(EarlyStoppingCallback(patience=2, min_delta=0.1), [-1.0, -1.05, -1.2])
    assert es.best == -1.2 and es.best_epoch == 2 and es.wait == 0
    feed(es, [-1.25, -1.3], start=3)  # 0.05 and 0.1 below -1.2: both within 0.12
    assert es.should_stop and es.best == -1.2


def test_zero_best_needs_any_strict_improvement():
    es = feed(EarlyStoppingCallback(patience=5, min_delta=0.5), [0.0, 0.0, -1e-9])
    assert es.best == -1e-9 and es.best_epoch == 2 and es.wait == 0


def test_mode_max_mirrors_on_a_metric():
    es = EarlyStoppingCallback(patience=2, mode="max", min_delta=0.01, monitor="val_accuracy")
    feed(es, [0.80, 0.805, 0.90, 0.90, 0.905], key="val_accuracy")
    assert es.best == 0.90 and es.best_epoch == 2 and es.should_stop


def test_monitor_reads_the_metric_not_the_val_loss():
    es = EarlyStoppingCallback(patience=1, mode="max", min_delta=0.0, monitor="val_accuracy")
    es.on_val_end(None, epoch=0, val_loss=5.0, metrics={"val_accuracy": 0.5})
    es.on_val_end(None, epoch=1, val_loss=1.0, metrics={"val_accuracy": 0.6})  # val_loss better, accuracy better
    es.on_val_end(None, epoch=2, val_loss=0.1, metrics={"val_accuracy": 0.6})  # val_loss much better: ignored
    assert es.best == 0.6 and es.best_epoch == 1 and es.should_stop


def test_a_missing_monitored_metric_is_an_error():
    es = EarlyStoppingCallback(monitor="val_f1")
    with pytest.raises(KeyError, match="val_f1"):
        es.on_val_end(None, epoch=0, val_loss=1.0, metrics={"val_accuracy": 0.5})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_never_an_improvement(bad):
    es = feed(EarlyStoppingCallback(patience=1), [bad])
    assert es.best is None and es.should_stop
    es = feed(EarlyStoppingCallback(patience=2), [1.0, bad])
    assert es.best == 1.0 and es.wait == 1


def test_state_dict_round_trip_continues_identically():
    values = [1.0, 0.9, 0.91, 0.8, 0.81, 0.82, 0.83, 0.7, 0.71, 0.72, 0.73, 0.74]
    for cut in range(1, len(values)):
        whole = decisions(EarlyStoppingCallback(patience=3, min_delta=0.01), values)
        first = EarlyStoppingCallback(patience=3, min_delta=0.01)
        feed(first, values[:cut])
        resumed = EarlyStoppingCallback(patience=3, min_delta=0.01)
        resumed.load_state_dict(first.state_dict())
        assert decisions(resumed, values[cut:], start=cut) == whole[cut:], cut
    assert any(d[3] for d in whole)  # the sequence does reach a stop


def test_state_dict_round_trip_random_sequences_and_torch_save(tmp_path):
    rng = random.Random(0)
    for trial in range(20):
        mode = rng.choice(["min", "max"])
        kwargs = dict(patience=rng.randint(1, 4), mode=mode, min_delta=rng.choice([0.0, 1e-3, 0.05]))
        values = [rng.choice([rng.uniform(-2, 2), 0.0, 1.0]) for _ in range(15)]
        cut = rng.randint(0, 14)
        whole = decisions(EarlyStoppingCallback(**kwargs), values)
        first = feed(EarlyStoppingCallback(**kwargs), values[:cut])
        torch.save(first.state_dict(), tmp_path / "es.pt")
        resumed = EarlyStoppingCallback(**kwargs)
        resumed.load_state_dict(torch.load(tmp_path / "es.pt", weights_only=True))
        assert decisions(resumed, values[cut:], start=cut) == whole[cut:], (trial, kwargs, values, cut)


@pytest.mark.parametrize("kwargs", [{"mode": "minimum"}, {"patience": 0}, {"mode": "MAX"}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EarlyStoppingCallback(**kwargs)


def test_stops_a_real_training_on_val_accuracy():
    """Labels the model cannot learn (random): val accuracy stalls, training stops after `patience`."""
    ends = []

    class Ends(TrainingCallback):
        def on_epoch_end(self, trainer, *, epoch, metrics, **kwargs):
            ends.append((epoch, metrics["val_accuracy"]))

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = torch.nn.Linear(4, 2)
    es = EarlyStoppingCallback(patience=2, mode="max", min_delta=0.0, monitor="val_accuracy")
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), None, torch.nn.CrossEntropyLoss(),
                      [es, Ends()], metrics={"accuracy": accuracy})
    result = trainer.train([(x, y)], [(x, y)], epochs=50)
    assert trainer.stop_reason == "early_stopping" and math.isfinite(result)
    assert [e for e, _ in ends] == [0, 1, 2]  # lr 0: the accuracy never changes, 2 epochs of patience
    assert es.best == ends[0][1] and es.best_epoch == 0
