"""Reading an experiment file (or a dict of the same shape): YAML, `--set` overrides, validation,
and every schema error stated as one line (file, key path, rule, value, valid choices)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from tuneloop.config.errors import UserError, Verbatim
from tuneloop.config.overrides import apply_override
from tuneloop.config.yaml12 import parse_yaml
from tuneloop.config.schema import (DEVICE_PATTERN, DEVICES, IMPORT_KEYS, IMPORT_PATH, PARAM_TYPES, RULES, ExperimentConfig,
                                    _KeyedError)


DICT_FILE = "<experiment dict>"  # how messages name an experiment given as a dict (the Python API)


def source_name(experiment) -> str:
    """How messages name an experiment: its file, or `<experiment dict>`."""
    return DICT_FILE if isinstance(experiment, (Mapping, ExperimentConfig)) else str(experiment)


def load_experiment(path: str | Path | Mapping | ExperimentConfig, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file (or a dict of the same shape, whose import
    paths may also be the classes and functions themselves, or a validated experiment); raise
    UserError on any mistake."""
    overrides = list(overrides)
    if isinstance(path, ExperimentConfig):
        if not overrides:
            return path
        path = path.model_dump(mode="json", by_alias=True)
    if isinstance(path, Mapping):
        raw = with_import_paths(copy.deepcopy(dict(path)))
        overridden = {apply_override(raw, assignment, file=DICT_FILE): assignment for assignment in overrides}
        return validate_experiment(raw, file=DICT_FILE, overridden=overridden)
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError("experiment file does not exist", file=file) from None
    except OSError as exc:
        raise UserError(f"cannot read experiment file ({exc.strerror})", file=file) from None
    raw = parse_yaml(text, file=file)
    if not isinstance(raw, dict):
        raise UserError("an experiment file must be a mapping with keys run and sweep", file=file,
                        value=type(raw).__name__, choices=["run", "sweep"])
    overridden = {apply_override(raw, assignment, file=file): assignment for assignment in overrides}
    return validate_experiment(raw, file=file, overridden=overridden)


def import_path(obj: Any, *, key: str) -> str:
    """The import path of a class or function given in an experiment dict (`my.module.Name`)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (module and name) or "<locals>" in name:
        raise UserError("must be an import path, or a class or function defined at the top of a module",
                        file=DICT_FILE, key=key, value=Verbatim(repr(obj)))
    return f"{module}.{name}"


def with_import_paths(raw: dict) -> dict:
    """`raw` with the classes and functions given for import paths (run.data, run.net, ...,
    run.metrics, run.callbacks' classes) replaced by their paths; the rest as it is."""
    run = raw.get("run")
    if not isinstance(run, dict):
        return raw
    for key in IMPORT_KEYS:
        if run.get(key) is not None and not isinstance(run[key], str):
            run[key] = import_path(run[key], key=f"run.{key}")
    if isinstance(run.get("metrics"), list):
        run["metrics"] = [m if isinstance(m, str) else import_path(m, key=f"run.metrics.{i}")
                          for i, m in enumerate(run["metrics"])]
    for index, spec in enumerate(run.get("callbacks") or ()):
        if isinstance(spec, dict) and spec.get("class") is not None and not isinstance(spec["class"], str):
            spec["class"] = import_path(spec["class"], key=f"run.callbacks.{index}.class")
    return raw


def validate_experiment(raw: dict, *, file: str, overridden: dict[str, str] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        error = _translate(exc.errors()[0], file=file)
        for key, assignment in (overridden or {}).items():
            if error.key and (error.key == key or error.key.startswith(key + ".")
                              or key.startswith(error.key + ".")):
                error.at(origin=f"--set {assignment}")
        raise error from None


def _translate(error: dict, *, file: str) -> UserError:
    """One pydantic error → a UserError with key path, rule, value and choices."""
    context = error.get("ctx") or {}
    raised = context.get("error")
    if isinstance(raised, _KeyedError):  # its key is relative to the model that raised it
        key = ".".join([*map(str, _clean_loc(error["loc"])), raised.key])
        return UserError(raised.rule, file=file, key=key, value=raised.value, choices=raised.choices)
    loc = _clean_loc(error["loc"])
    key = ".".join(str(part) for part in loc)
    kind, value = error["type"], error.get("input", ...)
    if kind == "extra_forbidden":
        return UserError("unknown key", file=file, key=key, value=loc[-1], choices=_fields_at(error["loc"][:-1]))
    if kind == "missing":
        return UserError("required key is missing", file=file, key=key)
    if kind == "literal_error":
        expected = context.get("expected", "")
        return UserError("must be one of the valid choices", file=file, key=key, value=value,
                         choices=re.findall(r"'([^']*)'", expected) or [expected])
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = re.findall(r"'([^']*)'", str(context.get("expected_tags", "")))
        return UserError("type must be one of the valid choices", file=file, key=f"{key}.type",
                         value=context.get("tag", ...), choices=tags)
    if kind == "string_pattern_mismatch" and context.get("pattern") == DEVICE_PATTERN:
        return UserError("must be a device name", file=file, key=key, value=value, choices=DEVICES)
    if kind == "string_pattern_mismatch" and context.get("pattern") == IMPORT_PATH:
        return UserError("must be an import path like package.module.Name", file=file, key=key, value=value)
    if kind == "value_error":
        message = str(raised) if raised is not None else error["msg"]
        rule, _, got = message.partition(", but got ")
        return UserError(rule, file=file, key=key, value=Verbatim(got) if got else value)
    if kind in RULES:
        return UserError(RULES[kind].format(**context), file=file, key=key, value=value)
    rule = error["msg"][0].lower() + error["msg"][1:]
    return UserError(rule, file=file, key=key, value=value)




def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-tag element after each search-space key (…, 'lr', 'float', 'low'),
    in sub-spaces too (…, 'subspaces', 'torch.optim.SGD', 'optimizer_config.momentum', 'float', …)."""
    parts, kept, index = list(loc), [], 0
    while index < len(parts):
        part = parts[index]
        kept.append(part)
        skip = {"search_space": 1, "subspaces": 2}.get(part) if isinstance(part, str) else None
        if skip and index + skip + 1 < len(parts) and parts[index + skip + 1] in PARAM_TYPES:
            kept += parts[index + 1:index + skip + 1]  # the key (and the choice), without the tag
            index += skip + 2
            continue
        index += 1
    return tuple(kept)


def _fields_at(loc: tuple) -> list[str] | None:
    """Valid keys of the schema model found at `loc`, for 'unknown key' messages."""
    if loc and loc[-1] in PARAM_TYPES and "search_space" in loc:  # inside a parameter (top or sub-space)
        return list(PARAM_TYPES[loc[-1]].model_fields)
    model: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else None
