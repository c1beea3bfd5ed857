"""Experiment files: YAML 1.2 numbers, --set overrides, and bad input → exit 2 with one clear message."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneloop import cli
from tuneloop.config import ExperimentConfig, check_imports, load_experiment, parse_yaml

DIGITS = Path(__file__).resolve().parents[2] / "experiments" / "digits_mlp.yaml"


def base() -> dict:
    return yaml.safe_load(DIGITS.read_text().replace("1e4", "1.0e+4"))


def write(tmp_path: Path, data: dict | str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def mutate(change):
    data = copy.deepcopy(base())
    change(data)
    return data


def test_yaml_12_numbers():
    values = parse_yaml("a: 1e-3\nb: 1e4\nc: 1.0e+4\nd: 3\ne: .5\nf: -2E2\ng: .inf\nh: 1_000\ni: '1e-3'")
    assert values["a"] == 1e-3 and isinstance(values["a"], float)
    assert values["b"] == 1e4 and isinstance(values["b"], float)
    assert values["c"] == 1e4 and values["d"] == 3 and isinstance(values["d"], int)
    assert values["e"] == 0.5 and values["f"] == -200.0 and values["g"] == float("inf")
    assert values["i"] == "1e-3"  # quoted stays a string


def test_shipped_experiments_validate():
    paths = sorted(DIGITS.parent.glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_experiment(path)
        assert isinstance(cfg, ExperimentConfig)
        assert cfg.run.epochs > 0 and cfg.sweep.search_space
        resolved = check_imports(cfg)
        assert callable(resolved["net"]) and callable(resolved["optimizer"])


def test_digits_file_reads_numbers_as_floats():
    cfg = load_experiment(DIGITS)
    assert cfg.run.gradient_monitor_config.warn_threshold == 1e4
    assert cfg.run.optimizer_config["lr"] == pytest.approx(0.1)
    assert cfg.sweep.search_space["optimizer_config.lr"].low == pytest.approx(1e-3)


def test_set_overrides_dotted_keys_and_search_space_fields():
    cfg = load_experiment(DIGITS, ["run.epochs=5", "sweep.num_samples=4", "run.net_config.hidden=32",
                                   "sweep.search_space.optimizer_config.lr.high=0.5",
                                   "run.metrics=[accuracy]"])
    assert cfg.run.epochs == 5 and cfg.sweep.num_samples == 4 and cfg.run.net_config["hidden"] == 32
    assert cfg.sweep.search_space["optimizer_config.lr"].high == 0.5


# (id, experiment data or raw text, extra CLI args, fragments the message must contain)
BAD_INPUTS = [
    ("unknown_key", mutate(lambda d: d["run"].update(epochz=3)), [],
     ["run.epochz", "unknown key", "'epochz'", "valid choices", "'epochs'"]),
    ("wrong_type", mutate(lambda d: d["run"].update(epochs="ten")), [],
     ["run.epochs", "must be an integer", "'ten'"]),
    ("negative_epochs", mutate(lambda d: d["run"].update(epochs=-3)), [],
     ["run.epochs", "must be > 0", "-3"]),
    ("unknown_import", mutate(lambda d: d["run"].update(optimizer="torch.optim.Adamw")), [],
     ["run.optimizer", "has no attribute 'Adamw'", "'AdamW'"]),
    ("missing_module", mutate(lambda d: d["run"].update(net="nosuchpkg.models.Net")), [],
     ["run.net", "no module named 'nosuchpkg'", "nosuchpkg.models.Net"]),
    ("unknown_optimizer_kwarg", mutate(lambda d: d["run"]["optimizer_config"].update(lrate=0.1)), [],
     ["run.optimizer_config.lrate", "unknown keyword argument of pytorch_optimizer.SPlus", "'lr'"]),
    ("unknown_scheduler_name", mutate(lambda d: d["sweep"]["scheduler"].update(name="ashaa")), [],
     ["sweep.scheduler.name", "'ashaa'", "'asha'", "'hyperband'", "'pfl'"]),
    ("low_not_below_high", mutate(lambda d: d["sweep"]["search_space"]["optimizer_config.lr"].update(
        low=0.1, high=0.0001)), [],
     ["sweep.search_space.optimizer_config.lr", "low < high must hold", "low=0.1, high=0.0001"]),
    ("empty_choices", mutate(lambda d: d["sweep"]["search_space"]["batch_size"].update(choices=[])), [],
     ["sweep.search_space.batch_size.choices", "at least one choice"]),
    ("mixed_choices", mutate(lambda d: d["sweep"]["search_space"]["batch_size"].update(choices=[64, "big"])), [],
     ["sweep.search_space.batch_size.choices", "one type"]),
    ("log_with_nonpositive_low", mutate(lambda d: d["sweep"]["search_space"]["optimizer_config.lr"].update(
        low=0.0)), [],
     ["sweep.search_space.optimizer_config.lr", "low > 0 must hold when log is true", "low=0.0"]),
    ("unknown_param_type", mutate(lambda d: d["sweep"]["search_space"]["batch_size"].update(type="choice")), [],
     ["sweep.search_space.batch_size.type", "'choice'", "'categorical'"]),
    ("search_key_not_in_run", mutate(lambda d: d["sweep"]["search_space"].update(
        {"optimiser_config.lr": {"type": "float", "low": 0.1, "high": 1.0}})), [],
     ["sweep.search_space.optimiser_config.lr", "dotted path into run", "'optimizer_config'"]),
    ("unknown_sampler", mutate(lambda d: d["sweep"]["sampler"].update(name="TPE")), [],
     ["sweep.sampler.name", "'TPE'", "'TPESampler'", "'CmaEsSampler'"]),
    ("bad_mode", mutate(lambda d: d["sweep"].update(mode="minimize")), [],
     ["sweep.mode", "'minimize'", "'min'", "'max'"]),
    ("unknown_metric", mutate(lambda d: d["sweep"].update(metric="val_acc")), [],
     ["sweep.metric", "must name a reported metric", "'val_acc'", "'val_accuracy'"]),
    ("missing_required_key", mutate(lambda d: d["run"].pop("net")), [],
     ["run.net", "required key is missing"]),
    ("scheduler_missing_argument", mutate(lambda d: d["run"].update(scheduler_config={})), [],
     ["run.scheduler_config", "requires keyword argument(s) T_max"]),
    ("fractional_gpu_above_one", mutate(lambda d: d["sweep"]["resources_per_trial"].update(gpu=1.5)), [],
     ["sweep.resources_per_trial.gpu", "whole number", "1.5"]),
    ("unknown_builtin_metric", mutate(lambda d: d["run"].update(metrics=["acuracy"])), [],
     ["run.metrics", "'acuracy'", "accuracy"]),
    ("malformed_yaml", "run:\n  name: x\n   epochs: [1, 2\n", [], ["is not valid YAML", "line"]),
    ("not_a_mapping", "- just\n- a list\n", [], ["must be a mapping", "'run'", "'sweep'"]),
    ("duplicate_key", "run:\n  epochs: 3\n  epochs: 4\n", [], ["duplicate key 'epochs'"]),
    ("set_wrong_type", base(), ["--set", "run.batch_size=many"],
     ["run.batch_size", "must be an integer", "'many'", "--set run.batch_size=many"]),
    ("set_without_equals", base(), ["--set", "run.epochs"], ["--set", "KEY=VALUE", "'run.epochs'"]),
    ("storage_path_unsupported_scheme", mutate(lambda d: d["sweep"].update(storage_path="gs://bucket/x")), [],
     ["sweep.storage_path", "local directory or an s3:// URI", "'gs://bucket/x'", "s3://bucket/prefix"]),
    ("s3_without_bucket", mutate(lambda d: d["sweep"].update(storage_path="s3://")), [],
     ["sweep.storage_path", "must name a bucket", "'s3://'"]),
    ("s3_endpoint_with_local_storage", mutate(lambda d: d["sweep"].update(s3_endpoint="http://127.0.0.1:9000")), [],
     ["sweep.s3_endpoint", "only used with an s3:// storage_path", "'http://127.0.0.1:9000'"]),
    ("s3_endpoint_not_a_url", mutate(lambda d: d["sweep"].update(storage_path="s3://b/p", s3_endpoint="127.0.0.1:9000")),
     [], ["sweep.s3_endpoint", "http(s)://host[:port]", "'127.0.0.1:9000'"]),
    ("bad_early_stopping_monitor", mutate(lambda d: d["run"]["early_stopping_config"].update(monitor="acc")), [],
     ["run.early_stopping_config.monitor", "'acc'", "'val_accuracy'"]),
]


@pytest.mark.parametrize("case_id, data, extra, fragments", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("command", ["train", "validate"])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, monkeypatch, capsys, command, case_id, data,
                                                  extra, fragments):
    path = write(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    status = cli.main([command, str(path.name), *extra])
    out, err = capsys.readouterr()
    assert status == 2
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path.name}"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: nope.yaml: experiment file does not exist"
    assert list(tmp_path.iterdir()) == []


def test_bad_input_through_the_console_script(tmp_path):
    path = write(tmp_path, mutate(lambda d: d["run"].update(epochs="ten")))
    proc = subprocess.run([sys.executable, "-m", "tuneloop.cli", "train", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}: run.epochs: must be an integer, but got 'ten'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]
