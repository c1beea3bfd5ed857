"""Resolving import paths from experiment files and checking keyword arguments against signatures
(of the user's data, model, optimizer, schedule, criterion, metrics and callbacks, and the sampler).

Import paths in an experiment file run code when resolved, exactly like a Python script would.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from typing import Any, Callable, Iterable

from tuneloop.config.errors import UserError
from tuneloop.config.schema import IMPORT_KEYS, ExperimentConfig, flat_params, walk_params


def resolve(path: str, *, key: str) -> Any:
    """The object at `package.module.Name[.attr]`, or a UserError naming `key`. `__main__` (a
    notebook, or a script run directly) is refused: Ray's workers cannot import what it defines."""
    parts = path.split(".")
    if parts[0] == "__main__":
        raise UserError("must be importable by Ray's workers, which cannot import __main__ (a notebook, or a "
                        "script run directly): define it in a module of an installed package or of a directory "
                        "on PYTHONPATH", key=key, value=path)
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # a shorter prefix may be the module
            raise UserError(f"importing {module_name} failed: {exc}", key=key, value=path) from None
        except Exception as exc:  # the user's module raised while importing
            raise UserError(f"importing {module_name} raised {type(exc).__name__}: {exc}",
                            key=key, value=path) from None
        obj = module
        for index, part in enumerate(parts[split:], start=split):
            if not hasattr(obj, part):
                public = sorted(n for n in dir(obj) if not n.startswith("_"))
                raise UserError(f"{'.'.join(parts[:index])} has no attribute {part!r}", key=key,
                                value=path, choices=public if len(public) <= 60 else None)
            obj = getattr(obj, part)
        return obj
    raise UserError(f"must be an importable path like package.module.Name (no module named "
                    f"{parts[0]!r})", key=key, value=path)


def accepted_kwargs(fn: Callable) -> tuple[list[str], list[str], bool]:
    """(all keyword names, required keyword names, takes **kwargs) of a callable or class."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], [], True
    names, required, var_kw = [], [], False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kw = True
        elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            names.append(param.name)
            if param.default is param.empty:
                required.append(param.name)
    return names, required, var_kw


def check_kwargs(fn: Callable, kwargs: Iterable[str], *, key: str, path: str,
                 supplied: Iterable[str] = (), check_required: bool = True, strict: bool = False) -> None:
    """Every name in `kwargs` is a keyword argument of `fn`; required ones are given.

    `supplied` names are passed by tuneloop itself (e.g. an optimizer's `params`). With
    `strict`, a `**kwargs` catch-all beside named arguments does not admit other names
    (pytorch_optimizer's optimizers take `**kwargs` and silently drop typos).
    """
    names, required, var_kw = accepted_kwargs(fn)
    if strict and var_kw and any(n not in supplied and n != "self" for n in names):
        var_kw = False
    supplied = set(supplied)
    valid = [n for n in names if n not in supplied and n != "self"]
    for name in kwargs:
        if name not in names and not var_kw:
            if not valid:
                raise UserError(f"{path} takes no keyword arguments", key=f"{key}.{name}", value=name)
            raise UserError(f"unknown keyword argument of {path}", key=f"{key}.{name}", value=name,
                            choices=valid)
    if check_required:
        missing = [n for n in required if n not in supplied and n not in set(kwargs) and n != "self"]
        if missing:
            raise UserError(f"{path} requires keyword argument(s) {', '.join(missing)}", key=key,
                            value=dict.fromkeys(kwargs, "...") or {})


# (section, arguments tuneloop passes itself, library code whose **kwargs must not hide typos)
RUN_SECTIONS = (("data", (), False), ("net", (), False), ("optimizer", ("params",), True),
                ("scheduler", ("optimizer",), True), ("criterion", (), True))


def resolve_run(run, *, extra_keys: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Resolve the import paths of a RunConfig and check their keyword arguments.

    Returns {"trainer": class, "data", "net", "optimizer", "scheduler", "criterion", "collate_fn":
    callables (None when not set), "metrics": {name: fn}, "callbacks": [classes]}. `extra_keys[section]` are keyword names set later (by a search space).
    """
    from tuneloop.metrics import BUILTIN

    extra_keys = extra_keys or {}
    resolved: dict[str, Any] = {"scheduler": None, "criterion": None, "collate_fn": None}
    for section in ("trainer", "collate_fn"):  # no keyword arguments of their own
        path = getattr(run, section)
        if path is not None:
            resolved[section] = resolve(path, key=f"run.{section}")
            if not callable(resolved[section]):
                raise UserError("must name a class or function", key=f"run.{section}", value=path)
    for section, supplied, strict in RUN_SECTIONS:
        path = getattr(run, section)
        if path is None:
            continue
        obj = resolve(path, key=f"run.{section}")
        if not callable(obj):
            raise UserError("must name a class or function", key=f"run.{section}", value=path)
        kwargs = list(getattr(run, f"{section}_config")) + list(extra_keys.get(f"{section}_config", ()))
        check_kwargs(obj, kwargs, key=f"run.{section}_config", path=path, supplied=supplied, strict=strict)
        resolved[section] = obj
    resolved["metrics"] = {name.rsplit(".", 1)[-1]: BUILTIN.get(name) or resolve(name, key="run.metrics")
                           for name in run.metrics}
    resolved["callbacks"] = []
    for index, spec in enumerate(run.callbacks):
        cls = resolve(spec.class_, key=f"run.callbacks.{index}.class")
        kwargs = [*spec.kwargs, *(k for k in extra_keys.get(f"callbacks.{index}", ()) if k not in spec.kwargs)]
        check_kwargs(cls, kwargs, key=f"run.callbacks.{index}", path=spec.class_)
        resolved["callbacks"].append(cls)
    return resolved


def _space_keys(keys: Iterable[str], section: str) -> list[str]:
    """Sub-keys of `run.<section>` among the searched `keys` (they are keyword arguments too)."""
    prefix = f"{section}."
    return [k[len(prefix):] for k in keys if k.startswith(prefix)]


def branches(cfg: ExperimentConfig):
    """Each configuration of `run` a trial can have, as far as import paths and keyword names go:
    (run with the choices made, the searched keys it uses, the choices as text). One branch per
    combination of the choices of the top-level categorical parameters that set an import path
    or carry sub-spaces; a flat space is one branch."""
    space = cfg.sweep.search_space
    dims = [(k, p) for k, p in space.items() if getattr(p, "subspaces", None) or k in IMPORT_KEYS
            and getattr(p, "choices", None)]
    always = list(space)
    for combination in itertools.product(*[p.choices for _, p in dims]):
        run, keys = cfg.run, list(always)
        for (key, param), choice in zip(dims, combination):
            if key in IMPORT_KEYS:
                run = run.model_copy(update={key: choice})
            keys += list(flat_params(param.subspaces.get(str(choice), {})))
        yield run, keys, ", ".join(f"{key} is {choice}" for (key, _), choice in zip(dims, combination))


def check_imports(cfg: ExperimentConfig) -> dict[str, Any]:
    """Resolve every import path of `run`, check keyword arguments (search-space keys included)
    and the sampler; return the resolved objects (of the first branch). With a conditional space or
    searched import paths, every choice is checked with the keys it uses. Runs the user's modules,
    like a Python script. (The scheduler's keyword arguments are Ray Tune's:
    `tuneloop.tune.schedulers.check_scheduler`.)"""
    sections = ("data_config", "net_config", "optimizer_config", "scheduler_config", "criterion_config",
                *(f"callbacks.{index}" for index in range(len(cfg.run.callbacks))))
    where = {dotted: path for dotted, _, path in walk_params(cfg.sweep.search_space, "sweep.search_space")}
    resolved = None
    for run, keys, choices in branches(cfg):
        try:
            found = resolve_run(run, extra_keys={s: _space_keys(keys, s) for s in sections})
        except UserError as error:
            dotted = (error.key or "").removeprefix("run.")
            head, _, name = dotted.partition(".")
            if dotted in where and name not in (getattr(cfg.run, head, None) or {}):
                error.key = where[dotted]  # the name came from the search space, not from run
            if choices:
                error.rule = f"{error.rule} (when {choices})"
                error.args = (error.message,)
            raise error from None
        resolved = resolved or found
    _check_sampler(cfg)
    return resolved


def _check_sampler(cfg: ExperimentConfig) -> None:
    import optuna

    sampler = cfg.sweep.sampler
    valid = sorted(n for n in dir(optuna.samplers) if n.endswith("Sampler") and n != "BaseSampler")
    if sampler.name not in valid:
        raise UserError("must name a sampler class of optuna.samplers", key="sweep.sampler.name",
                        value=sampler.name, choices=valid)
    check_kwargs(getattr(optuna.samplers, sampler.name), sampler.kwargs, key="sweep.sampler",
                 path=f"optuna.samplers.{sampler.name}", check_required=False)
