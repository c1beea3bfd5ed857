"""Safe loading and secrets.

- Every `torch.load` in the package passes `weights_only=True` (a scan of the source, so a new
  call without it fails here); every YAML load uses a SafeLoader, and the experiment loader
  refuses Python tags without running them; the only unpickling is of Tune's own state files in
  the experiment directory (listed here, so that a new one is a reviewed decision).
- Credentials in the environment (`WANDB_API_KEY`, AWS keys, a Hugging Face token) appear in no
  file that `tuneloop sweep`, `resume`, `report` or `train` writes (experiment directory, trial
  directories, W&B offline runs, Ray's own logs and session files) nor in their output; a
  credential cannot be put into the experiment file (no such field; s3_endpoint refuses user:pass@).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tl_sweeps import probe_experiment

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tuneloop"
MODULES = sorted(PACKAGE.rglob("*.py"))


def calls(path: Path):
    """(call node, dotted name of the function called) for every call in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, _dotted(node.func)


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _module_name(path: Path) -> str:
    return ".".join(("tuneloop", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_every_torch_load_is_weights_only():
    found = []
    for path in MODULES:
        for node, name in calls(path):
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("torch", "serialization"):
                found.append(f"{path.name}:{node.lineno}")
                keywords = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in keywords, f"{path}:{node.lineno}: torch.load without weights_only=True"
                value = keywords["weights_only"]
                assert isinstance(value, ast.Constant) and value.value is True, \
                    f"{path}:{node.lineno}: torch.load(weights_only=...) must be the literal True"
    assert found, "no torch.load found: the scan is broken (checkpoints are read with torch.load)"


UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def test_every_yaml_load_is_safe():
    found = []
    for path in MODULES:
        module = None
        for node, name in calls(path):
            head, _, attr = name.rpartition(".")
            if head != "yaml":
                continue
            assert attr not in UNSAFE_YAML, f"{path}:{node.lineno}: yaml.{attr} runs arbitrary constructors"
            if attr in ("load", "load_all"):
                found.append(f"{path.name}:{node.lineno}")
                loader = {k.arg: k.value for k in node.keywords}.get("Loader")
                if loader is None and len(node.args) > 1:
                    loader = node.args[1]
                assert loader is not None, f"{path}:{node.lineno}: yaml.{attr} without a Loader"
                module = module or importlib.import_module(_module_name(path))
                resolved = eval(compile(ast.Expression(loader), str(path), "eval"), vars(module))  # a name
                assert isinstance(resolved, type) and issubclass(resolved, yaml.SafeLoader), \
                    f"{path}:{node.lineno}: yaml.{attr} with {resolved!r}, which is not a SafeLoader"
    assert found, "no yaml.load found: the scan is broken (experiment files are read with yaml.load)"


def test_python_tags_in_an_experiment_file_are_refused_without_running(tmp_path, capsys):
    from tuneloop import cli
    from tuneloop.config import parse_yaml
    from tuneloop.config.errors import UserError

    marker = tmp_path / "ran"
    payloads = [f"!!python/object/apply:os.system ['touch {marker}']",
                f"!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
                "!!python/name:os.system", "!!python/module:os"]
    for payload in payloads:
        with pytest.raises(UserError, match="is not valid YAML"):
            parse_yaml(f"run: {payload}\n")
    experiment = probe_experiment(tmp_path)
    text = yaml.safe_dump(experiment).replace("name: probe", f"name: {payloads[0]}", 1)
    (tmp_path / "x.yaml").write_text(text)
    assert cli.main(["validate", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "x.yaml" in err and "is not valid YAML" in err and "Traceback" not in err
    assert not marker.exists()


# Unpickling runs code: only Tune's own state files in the experiment directory are unpickled (as
# Ray's Tuner.restore does with tuner.pkl): resume a directory only when you would run its code.
ALLOWED_UNPICKLING = {
    "searcher.py": "the searcher's state (searcher-state-*.pkl)",
    "asha.py": "the scheduler's state (asha_state.pkl)",
    "_compat.py": "Tune's search generator state (search_gen_state-*.json, cloudpickled)",
}


def test_unpickling_only_of_tunes_own_state():
    found = set()
    for path in MODULES:
        for node, name in calls(path):
            head, _, attr = name.rpartition(".")
            if attr in ("load", "loads") and head.split(".")[-1] in ("pickle", "cloudpickle", "dill", "joblib"):
                found.add(path.name)
    assert found <= set(ALLOWED_UNPICKLING), f"new unpickling (review it, then list it): {found - set(ALLOWED_UNPICKLING)}"


SECRETS = {
    "WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcd",
    "AWS_ACCESS_KEY_ID": "AKIASECRETKEYID0000",
    "AWS_SECRET_ACCESS_KEY": "awssecretaccesskey/0123456789+abcdefghijkl",
    "AWS_SESSION_TOKEN": "awssessiontokensecret0123456789",
    "HF_TOKEN": "hf_secrettoken0123456789",
}


@pytest.mark.slow
def test_credentials_in_the_environment_are_never_written(tmp_path, ray_tmp):
    experiment = probe_experiment(tmp_path, epochs=2, num_samples=2, max_failures=1)
    experiment["run"]["wandb_config"] = {"enabled": True, "project": "tuneloop-tests", "mode": "offline"}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    wandb_home = tmp_path / "wandb_home"
    env = {**os.environ, **SECRETS, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1",
           "WANDB_CACHE_DIR": str(wandb_home / "cache"), "WANDB_CONFIG_DIR": str(wandb_home / "config"),
           "WANDB_DATA_DIR": str(wandb_home / "data"), "WANDB_ARTIFACT_DIR": str(wandb_home / "artifacts")}
    directory = tmp_path / "results" / "probe"
    outputs = []
    for command in (["sweep", "experiment.yaml"], ["resume", str(directory)], ["report", str(directory), "--json"],
                    ["train", "experiment.yaml", "--output", str(tmp_path / "train_run")]):
        done = subprocess.run([sys.executable, "-m", "tuneloop.cli", *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    assert list(directory.glob("trial_*/wandb/offline-run-*/run-*.wandb"))  # W&B did write its files
    assert list(Path(ray_tmp).rglob("runtime_env_agent.log"))  # and Ray its logs

    leaks = []
    for root in (tmp_path, Path(ray_tmp)):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                try:
                    content = path.read_bytes()
                except OSError:
                    continue
                leaks += [f"{name} in {path}" for name, secret in SECRETS.items() if secret.encode() in content]
    for output in outputs:
        leaks += [f"{name} in the output" for name, secret in SECRETS.items() if secret in output]
    assert not leaks, leaks


def test_a_credential_cannot_be_put_into_the_experiment_file(tmp_path, capsys):
    from tuneloop import cli

    (tmp_path / "x.yaml").write_text(yaml.safe_dump(probe_experiment(tmp_path)))
    assert cli.main(["validate", str(tmp_path / "x.yaml"), "--set", "run.wandb_config.api_key=abc"]) == 2
    assert "run.wandb_config.api_key: unknown key" in capsys.readouterr().err
    assert cli.main(["validate", str(tmp_path / "x.yaml"), "--set", "sweep.storage_path=s3://bucket/prefix",
                     "--set", "sweep.s3_endpoint=http://AKIA:secret@127.0.0.1:9000"]) == 2
    assert "sweep.s3_endpoint: must be http(s)://host[:port] (credentials come from the AWS_* variables" \
        in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before anything is written
