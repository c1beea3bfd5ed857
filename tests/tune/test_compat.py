"""The compat module knows which Ray and Optuna it was written for, and says so when they differ
(`tuneloop doctor` and every sweep print its warnings)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tuneloop.tune import _compat


def test_the_installed_versions_are_the_ones_it_was_written_for():
    assert _compat.version_warnings() == []
    low, high = _compat.WRITTEN_FOR["ray"]
    assert low <= _compat._major_minor(version("ray")) < high


def test_a_version_outside_the_range_is_named_with_the_range(monkeypatch):
    monkeypatch.setitem(_compat.WRITTEN_FOR, "optuna", ((3, 0), (3, 5)))
    [warning] = _compat.version_warnings()
    assert warning.startswith(f"optuna {version('optuna')} is installed, but tuneloop's use of its internals")
    assert "optuna >=3.0,<3.5" in warning


def test_versions_are_compared_by_major_and_minor():
    assert _compat._major_minor("2.60.0") == (2, 60)
    assert _compat._major_minor("5.0.0rc1") == (5, 0)
    assert _compat._major_minor("4") == (4, 0)
    assert (2, 60) <= _compat._major_minor("2.60.3") < (2, 61) and not _compat._major_minor("2.61.0") < (2, 61)


def test_doctor_prints_the_range_and_the_warning(monkeypatch, capsys):
    from tuneloop.reporting.doctor import doctor

    monkeypatch.setitem(_compat.WRITTEN_FOR, "ray", ((1, 0), (1, 1)))
    assert doctor(None) == 0
    out = capsys.readouterr().out
    assert "written for:" in out and "ray >=1.0,<1.1" in out
    assert f"warning: ray {version('ray')} is installed, but tuneloop's use of its internals" in out


def test_a_trial_restarted_in_the_same_driver_keeps_its_local_rows(tmp_path):
    """Ray's loggers would replace the local rows with the storage's copy, which may lag (the rows
    since Tune's last background upload were lost); a resumed sweep's new driver, with no local
    file yet, still takes the storage's copy."""
    from types import SimpleNamespace

    import pyarrow.fs

    local, remote = tmp_path / "staging", tmp_path / "storage"
    local.mkdir(), remote.mkdir()
    (remote / "result.json").write_text('{"epoch": 0}\n')  # the upload lags: one row of four
    (local / "result.json").write_text("".join(f'{{"epoch": {e}}}\n' for e in range(4)))
    trial = SimpleNamespace(local_path=str(local), checkpoint=object(),
                            storage=SimpleNamespace(trial_fs_path=str(remote),
                                                    storage_filesystem=pyarrow.fs.LocalFileSystem()))
    json_logger, csv_logger = _compat.trial_loggers()
    json_logger._restore_from_remote("result.json", trial)
    assert (local / "result.json").read_text().count("\n") == 4  # kept
    (remote / "progress.csv").write_text("epoch\n0\n")
    csv_logger._restore_from_remote("progress.csv", trial)
    assert (local / "progress.csv").read_text() == "epoch\n0\n"  # no local file: the storage's copy


def test_tunes_callback_count_by_name_is_rays_count_without_importing_the_trackers():
    """Ray's usage telemetry counts a run's callbacks by importing wandb and mlflow (2 s of a driver's
    CPU); the count by name is the same count, and imports neither."""
    import importlib.util
    import subprocess
    import sys

    import ray.air._internal.usage as usage
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune import Callback
    from ray.tune.logger import JsonLoggerCallback, LoggerCallback

    from tuneloop.tune.mlflow_logger import MLflowTracker

    class Mine(Callback):
        pass

    class MyLogger(LoggerCallback):
        pass

    callbacks = [JsonLoggerCallback(), JsonLoggerCallback(), MLflowLoggerCallback(), Mine(), MyLogger(),
                 MLflowTracker(experiment_name="probe", metric="val_loss"), object()]
    spec = importlib.util.spec_from_file_location("ray_usage_as_shipped", usage.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)  # Ray's own count (the running one may be replaced already)
    assert _compat._count_callbacks(callbacks) == dict(shipped._count_callbacks(callbacks))
    assert _compat._count_callbacks(callbacks) == {"JsonLoggerCallback": 2, "MLflowLoggerCallback": 1,
                                                   "CustomCallback": 1, "CustomLoggerCallback": 2}
    code = ("import sys\nfrom ray.air._internal import usage\nfrom ray.tune.logger import JsonLoggerCallback\n"
            "from tuneloop.tune import _compat\n_compat.count_callbacks_by_name()\n"
            "usage.tag_callbacks([JsonLoggerCallback()])\n"
            "print(sorted(n for n in ('mlflow', 'wandb', 'comet_ml', 'aim') if n in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.usefixtures("ray_local")
def test_a_fit_in_the_block_reads_no_trial_history_into_its_results(tmp_path):
    """Tune's ResultGrid reads every trial's result.json into a DataFrame as `fit` ends; inside
    `results_without_histories` it reads none (tuneloop reads each trial's history itself), and
    outside the block Tune reads them again."""
    from ray import tune
    from ray.tune import ExperimentAnalysis
    from ray.tune.logger import JsonLoggerCallback

    def reports(config):  # defined here: pickled by value for Ray's workers, which cannot import this module
        for epoch in range(3):
            tune.report({"epoch": epoch, "val_loss": config["x"] - epoch})

    def fit(name: str):
        return tune.Tuner(reports, param_space={"x": tune.grid_search([1.0, 2.0])},
                          run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                    callbacks=[JsonLoggerCallback()])).fit()  # result.json

    with _compat.results_without_histories():
        grid = fit("without")
        inside = ExperimentAnalysis(str(tmp_path / "without"))
    assert len(grid) == 2 and all(result.metrics_dataframe is None for result in grid)
    assert sorted(result.metrics["val_loss"] for result in grid) == [-1.0, 0.0]  # the last results stay
    assert inside.trial_dataframes == {}
    grid = fit("with")
    assert all(list(result.metrics_dataframe["epoch"]) == [0, 1, 2] for result in grid)
    assert all(len(frame) == 3 for frame in ExperimentAnalysis(str(tmp_path / "without")).trial_dataframes.values())
