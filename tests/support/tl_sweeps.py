"""Sweeps for tests: a fast probe experiment, in-process and console-script runs, interrupting a
sweep at a chosen point, and reading what a resume restores (used by the sweep, trial, report and
fault tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from tuneloop import cli


def probe_experiment(tmp_path: Path, *, epochs: int = 4, **sweep) -> dict:
    """A fast experiment on tests/support/tl_testing.py: 4 trials of 4 epochs of a tiny MLP on blobs,
    one at a time unless `max_concurrent_trials` says more (each trial running at once is a Ray
    worker of its own, which imports torch and Ray Tune: seconds of CPU on a 2-core machine)."""
    experiment = {
        "run": {"name": "probe", "data": "tl_testing.blobs", "net": "tl_testing.Probe",
                "net_config": {"hidden": 16}, "optimizer": "torch.optim.AdamW", "optimizer_config": {"lr": 0.01},
                "criterion": "torch.nn.CrossEntropyLoss", "metrics": ["accuracy"], "epochs": epochs,
                "batch_size": 32, "seed": 0, "checkpoint_config": {"save_every_n_epochs": 2}},
        "sweep": {"num_samples": 4, "max_concurrent_trials": 1, "storage_path": str(tmp_path / "results"),
                  "scheduler": {"name": "fifo"}, "sampler": {"name": "RandomSampler", "seed": 0},
                  "max_failures": 0,
                  "search_space": {"optimizer_config.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}},
    }
    experiment["sweep"].update(sweep)
    return experiment


def run_sweep(tmp_path: Path, experiment: dict, *extra: str) -> tuple[int, Path]:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    status = cli.main(["sweep", str(path), "--quiet", *extra])
    return status, tmp_path / "results" / experiment["run"]["name"]


def resume_here(directory: Path, shared_ray, capsys, *extra: str) -> tuple[int, str]:
    """`tuneloop resume DIRECTORY` in this process, on the tests' shared Ray: (exit status, output).
    The resuming driver's code without a second interpreter's imports and a Ray of its own to start
    (a resume as a process of its own, after each kind of interrupt: the interrupted-driver and
    three-kill tests, test_storage, test_legacy)."""
    shared_ray.up()
    capsys.readouterr()
    status = cli.main(["resume", str(directory), *extra])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def study_of(directory: Path, name: str = "probe") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'optuna.db'}")


def trial_rows(directory: Path) -> dict[str, list[dict]]:
    """Tune's result.json rows per trial directory."""
    rows = {}
    for trial_dir in sorted(directory.glob("trial_*")):
        text = (trial_dir / "result.json").read_text() if (trial_dir / "result.json").exists() else ""
        rows[trial_dir.name] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def launch(args: list[str], ray_tmp: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def launch_until_gated(path: Path, gate: Path, ray_tmp: str, cwd: Path, *, waiters: int = 1) -> subprocess.Popen:
    """`tuneloop sweep PATH --quiet`, returned once `waiters` processes wait at the tl_chaos.Gate
    `gate` (its `.waits` file has a line per waiter); fails with the driver's output if it ended first."""
    driver = launch(["sweep", str(path), "--quiet"], ray_tmp, cwd)
    waits = Path(f"{gate}.waits")
    deadline = time.monotonic() + 180
    while (not waits.exists() or len(waits.read_text().splitlines()) < waiters) and driver.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waits.exists(), driver.communicate(timeout=60)[0]
    return driver


def epochs_logged(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupt_after(command: list[str], log: Path, epochs: int, ray_tmp: str, cwd: Path) -> str:
    """Run `tuneloop COMMAND`, send SIGINT once `log` (an EpochLog) holds `epochs` more lines,
    check it exits 130 (interrupted, state saved) and return its output."""
    process = launch(command, ray_tmp, cwd)
    target = epochs_logged(log) + epochs
    deadline = time.monotonic() + 300
    while epochs_logged(log) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert epochs_logged(log) >= target, "the sweep did not reach the point to interrupt it at"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    return output


def restored_epochs(directory: Path) -> dict[float, int]:
    """Per trial (by its lr), the epoch of the checkpoint a resume continues it from (-1: none),
    as the experiment state it restores names it: the newest `experiment_state-*.json`, or, when a
    kill left a state file damaged, the backup generation `tuneloop resume` puts back."""
    import ray.cloudpickle as cloudpickle

    from tuneloop.storage import Storage
    from tuneloop.tune.state import restorable_state

    backup = restorable_state(Storage.local(directory))
    assert backup != {}, "a damaged state and no backup: the resume would refuse"
    if backup is None:
        text = sorted(directory.glob("experiment_state-*.json"))[-1].read_text()
    else:
        text = backup[max(name for name in backup if name.startswith("experiment_state-"))].decode()
    restored = {}
    for _trial, metadata in json.loads(text)["trial_data"]:
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        # Tune keeps each trial's checkpoint manager cloudpickled (hex) in its state file
        manager = cloudpickle.loads(bytes.fromhex(metadata["checkpoint_manager"]["value"]))
        latest = manager.latest_checkpoint_result
        if latest is not None:
            restored[latest.metrics["config"]["optimizer_config.lr"]] = int(latest.metrics["epoch"])
    return restored


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def rework_allowed(log: Path, restored: dict[float, int]) -> int:
    """The epochs a resume may train again: per trial, those it trained (the epoch log, by lr)
    after the checkpoint the restored state names. Timing decides how far Tune's state, uploaded
    in the background, lags the trials: the bound is read from that state, not assumed.
    First waits until every trial process of the log has exited: a trial's worker can finish an
    epoch after its driver and raylet are gone."""
    lines = log.read_text().splitlines() if log.exists() else []
    deadline = time.monotonic() + 60
    for pid in {json.loads(line)["pid"] for line in lines}:
        while time.monotonic() < deadline and running(pid):
            time.sleep(0.1)
    trained: dict[float, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        row = json.loads(line)
        trained[row["params"]] = max(trained.get(row["params"], -1), row["epoch"])
    return sum(max(0, last - restored.get(lr, -1)) for lr, last in trained.items())


def damage_searcher_state(directory: Path) -> None:
    """What a driver killed while Tune copies its snapshot to the storage leaves: a truncated file."""
    state = sorted(directory.glob("searcher-state-*.pkl"))[-1]
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])


def interruptible_experiment(tmp_path: Path, trials: int, epochs: int) -> tuple[Path, Path, Path]:
    """An ASHA sweep slowed down enough to be interrupted mid-epoch, a checkpoint every epoch and
    every trained epoch logged: (experiment file, experiment directory, epoch log)."""
    log = tmp_path / "epochs.jsonl"
    experiment = probe_experiment(tmp_path, epochs=epochs, num_samples=trials, max_concurrent_trials=2,
                                  scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2},
                                  sampler={"name": "TPESampler", "seed": 0})
    experiment["run"]["net_config"]["delay"] = 0.01
    experiment["run"]["checkpoint_config"]["save_every_n_epochs"] = 1
    experiment["run"]["callbacks"] = [{"class": "tl_testing.EpochLog", "path": str(log)}]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path, tmp_path / "results" / "probe", log
