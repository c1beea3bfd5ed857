"""The package's layers (docs/architecture.md): no import runs up a layer or round in a cycle, the
Ray-free layers stay free of Ray, and only `tuneloop/tune/_compat.py` reaches into the internals of
Ray, Optuna, wandb or torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tuneloop"

# bottom to top; a module may import its own layer and those below it
LAYERS = [
    {"_io", "storage", "checkpoints", "outcome", "curves", "metrics", "batches", "ranks"},
    {"config"},
    {"trainer", "callbacks"},
    {"training"},
    {"tune"},
    {"sweep"},
    {"reporting"},
    {"cli", "__init__", "api", "recipes"},  # the recipes are examples of user code: they may subclass the Trainer
]


def layer_of(module: str) -> int:
    """The layer of `tuneloop.<module>` (by its first component)."""
    head = module.split(".")[0]
    return next(index for index, names in enumerate(LAYERS) if head in names)


def imports() -> dict[str, set[str]]:
    """tuneloop module (dotted, without `tuneloop.`) → the tuneloop modules it imports (anywhere in it)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(part for part in relative.parts if part != "__init__") or "__init__"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneloop"):
                base = node.module.removeprefix("tuneloop").lstrip(".")
                if base:
                    found.add(base)
                else:  # from tuneloop import x
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name.removeprefix("tuneloop.") for a in node.names if a.name.startswith("tuneloop."))
        graph[name] = found
    return graph


def test_every_module_has_a_layer_and_no_import_runs_up():
    graph = imports()
    up = [f"{module} (layer {layer_of(module)}) → {target} (layer {layer_of(target)})"
          for module, targets in graph.items() for target in targets
          if layer_of(target) > layer_of(module)]
    assert up == []


def test_no_import_cycle():
    graph = imports()
    modules = set(graph)

    def resolve(target: str) -> str | None:  # a module, or the package it names
        return target if target in modules else None

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(module: str, stack: list[str]) -> bool:
        state[module] = 1
        for target in sorted(filter(None, map(resolve, graph[module]))):
            if state.get(target) == 1:
                cycle.extend(stack[stack.index(target):] + [target] if target in stack else [module, target])
                return True
            if state.get(target) is None and visit(target, stack + [target]):
                return True
        state[module] = 2
        return False

    for module in sorted(modules):
        if state.get(module) is None and visit(module, [module]):
            break
    assert cycle == []


@pytest.mark.parametrize("layer", ["tuneloop.config", "tuneloop.training"])
def test_the_ray_free_layers_import_no_ray(layer):
    """Every module of the layer imported in a fresh interpreter: `ray` is not among the modules."""
    modules = sorted(".".join(("tuneloop", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                     for p in (PACKAGE / layer.split(".")[1]).rglob("*.py"))
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{layer} imported Ray: {done.stdout.strip()[:300]}"
    assert len(modules) >= 4


# Names of Ray's, Optuna's, wandb's and torch's internals that tuneloop once used, or might be tempted to
PRIVATE_NAMES = re.compile(r"_experiment_analysis|_ot_study|_ot_trials|\._space\b|_completed_trials|\._suggest\b|"
                           r"\._trial_id\b|_study_id\b|_local_tuner|_tune_config\b|ENV_VARS_TO_PROPAGATE|"
                           r"wrap_function|global_worker_stdstream_dispatcher|experiment_driver_staging_path|"
                           r"trial_fs_path|_foreach_norm|get_num_cpus|\"Study\.stop\"")
LIBRARIES = ("ray", "optuna", "wandb", "torch")


def private_import(module: str) -> bool:
    """`ray._private.x`, `ray.train._internal.session`, `optuna._x`, ...: a component starting with `_`."""
    parts = module.split(".")
    return parts[0] in LIBRARIES and any(part.startswith("_") for part in parts[1:])


def test_only_the_compat_module_reaches_into_library_internals():
    compat = PACKAGE / "tune" / "_compat.py"
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == compat:
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and private_import(node.module):
                offences.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                offences += [f"{path.relative_to(PACKAGE)}:{node.lineno}: import {a.name}" for a in node.names
                             if private_import(a.name)]
        for number, line in enumerate(text.splitlines(), start=1):
            code = line.split("#", 1)[0]
            if PRIVATE_NAMES.search(code):
                offences.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offences == []
    # and the check can fail: the compat module itself is full of them
    assert PRIVATE_NAMES.search(compat.read_text()) and "ray._private" in compat.read_text()


def test_a_resuming_driver_imports_no_torch(repo_root):
    """What `tuneloop resume` runs before and while it drives the restored Tuner (loading the
    experiment, the Tuner's trainable, the summary and the reports) imports no torch: the driver never
    trains, and torch costs it about 2 s of start-up and hundreds of MB (the trials import it)."""
    code = "\n".join([
        "import sys",
        "import tuneloop.cli, tuneloop.sweep.resume, tuneloop.sweep.run, tuneloop.reporting.report",
        "from tuneloop.config import load_experiment",
        "from tuneloop.sweep.tuner import build_trainable",
        f"cfg = load_experiment({str(repo_root / 'experiments' / 'digits_mlp.yaml')!r})",
        "assert build_trainable(cfg) is not None",
        "print(sorted(n for n in sys.modules if n == 'torch' or n.startswith('torch.')))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"torch was imported: {done.stdout.strip()[:300]}"
