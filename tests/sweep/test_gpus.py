"""GPU allocation per trial with fake GPUs on CPU: every trial sees the GPU Ray assigned it, and
no more trials run at once than fit. (A real `cuda` trial: see the gpu-marked test.)"""

from __future__ import annotations

import pytest
import torch

from tl_ray import start_ray, stop_ray
from tl_sweeps import probe_experiment, run_sweep, trial_rows


@pytest.fixture(scope="module")
def ray_with_fake_gpus(shared_ray):
    shared_ray.down()  # this module's Ray has (fake) GPUs
    temp_dir = start_ray(num_cpus=2, num_gpus=2)
    yield
    stop_ray(temp_dir)


def intervals(rows: dict) -> list[tuple[float, float]]:
    spans = []
    for trial in rows.values():
        spans.append((trial[0]["started_at"], trial[-1]["reported_at"]))
    return spans


def most_at_once(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.usefixtures("ray_with_fake_gpus")
@pytest.mark.parametrize("gpu, expected_ids, most", [(0.5, {"0", "1"}, 4), (1, {"0", "1"}, 2), (2, {"0,1"}, 1)])
def test_fractional_and_whole_gpus(tmp_path, gpu, expected_ids, most):
    experiment = probe_experiment(tmp_path, epochs=6, num_samples=4, max_concurrent_trials=4,
                                  resources_per_trial={"cpu": 0.5, "gpu": gpu})
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    rows = trial_rows(directory)
    assert len(rows) == 4
    seen = {r["gpu_ids"] for trial in rows.values() for r in trial}
    assert seen <= expected_ids and seen, seen
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert {r["device"] for trial in rows.values() for r in trial} == {expected_device}
    assert most_at_once(intervals(rows)) <= most


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trial_trains_on_cuda(tmp_path):  # pragma: no cover - runs only where a GPU is present
    experiment = probe_experiment(tmp_path, num_samples=2, resources_per_trial={"cpu": 1, "gpu": 0.5})
    status, directory = run_sweep(tmp_path, experiment)
    assert status == 0
    assert {r["device"] for t in trial_rows(directory).values() for r in t} == {"cuda"}
