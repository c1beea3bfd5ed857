"""The typed experiment schema: `run` (what one trial trains) and `sweep` (how Ray Tune searches).

Each model checks what it can on its own (types, ranges, the search space against the fields of
`run` it sets); a failure carries its key path (`_KeyedError`) so that `tuneloop.config.loading`
states it as one line: file, key, rule, value, valid choices.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt,
                      PositiveFloat, PositiveInt, TypeAdapter, ValidationError, field_validator, model_validator)

from tuneloop.config.errors import Verbatim
from tuneloop.config.schedulers import NAMES as SCHEDULER_NAMES
from tuneloop.config.schedulers import REGISTRY as SCHEDULER_REGISTRY
from tuneloop.metrics import BUILTIN as BUILTIN_METRICS

IMPORT_PATH = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$"
ImportPath = Annotated[str, Field(pattern=IMPORT_PATH)]
SCHEDULERS = SCHEDULER_NAMES  # sweep.scheduler.name (tuneloop.config.schedulers)
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- run: what one trial trains -----------------------------------------------------------

class EarlyStoppingConfig(Strict):
    enabled: bool = True
    patience: PositiveInt = 20
    mode: Literal["min", "max"] = "min"
    min_delta: NonNegativeFloat = 1e-4
    monitor: str = "val_loss"


class CheckpointConfig(Strict):
    enabled: bool = True
    save_every_n_epochs: PositiveInt = 1
    keep_last_k: PositiveInt = 3
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class GradientMonitorConfig(Strict):
    enabled: bool = True
    warn_threshold: PositiveFloat = 1e4


class OverfitConfig(Strict):
    enabled: bool = True
    warmup_epochs: NonNegativeInt = 5
    window_size: PositiveInt = 5


class WandbConfig(Strict):
    enabled: bool = False
    project: str = "tuneloop"
    entity: str | None = None
    mode: Literal["offline", "online"] = "offline"
    tags: list[str] = []


class LoaderConfig(Strict):
    """Keyword arguments of `torch.utils.data.DataLoader` (a TensorDataset of two tensors with the
    defaults keeps the in-memory fast path instead)."""

    num_workers: NonNegativeInt = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: PositiveInt | None = None
    drop_last: bool = False

    @model_validator(mode="after")
    def _workers(self) -> "LoaderConfig":
        for key in ("persistent_workers", "prefetch_factor"):
            if getattr(self, key) not in (None, False) and self.num_workers == 0:
                raise _KeyedError(key, "needs loader worker processes (num_workers > 0)",
                                  Verbatim("true" if key == "persistent_workers" else getattr(self, key)),
                                  [f"{key}: {'false' if key == 'persistent_workers' else 'null'}",
                                   "num_workers: 2"])
        return self


PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile(mode=)


class CallbackSpec(BaseModel):
    """A user callback: `{class: my.module.MyCallback, **kwargs}`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_: ImportPath = Field(alias="class")

    @property
    def kwargs(self) -> dict:
        return dict(self.model_extra or {})


IMPORT_KEYS = ("trainer", "data", "net", "optimizer", "scheduler", "criterion", "collate_fn")  # run's import paths


class RunConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    trainer: ImportPath = "tuneloop.trainer.Trainer"  # a subclass overrides compute_loss for a custom step
    data: ImportPath
    data_config: dict[str, Any] = {}
    collate_fn: ImportPath | None = None
    loader_config: LoaderConfig = LoaderConfig()
    net: ImportPath
    net_config: dict[str, Any] = {}
    optimizer: ImportPath
    optimizer_config: dict[str, Any] = {}
    scheduler: ImportPath | None = None
    scheduler_config: dict[str, Any] = {}
    criterion: ImportPath | None = "torch.nn.CrossEntropyLoss"  # null: run.trainer's compute_loss makes the loss
    criterion_config: dict[str, Any] = {}
    metrics: list[str] = []
    epochs: PositiveInt
    batch_size: PositiveInt
    val_batch_size: PositiveInt = 1024
    precision: Literal[PRECISIONS] = "fp32"
    grad_clip_norm: PositiveFloat | None = None
    accumulate_steps: PositiveInt = 1
    compile: Union[bool, Literal[COMPILE_MODES]] = False
    seed: int = 0
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    early_stopping_config: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint_config: CheckpointConfig = CheckpointConfig()
    gradient_monitor_config: GradientMonitorConfig = GradientMonitorConfig()
    overfit_config: OverfitConfig = OverfitConfig()
    wandb_config: WandbConfig = WandbConfig()
    callbacks: list[CallbackSpec] = []

    @field_validator("metrics")
    @classmethod
    def _metrics_named(cls, metrics: list[str]) -> list[str]:
        for name in metrics:
            if name not in BUILTIN_METRICS and not re.match(IMPORT_PATH, name):
                raise ValueError(f"a metric must be a built-in name or an import path; valid choices: "
                                 f"{', '.join(BUILTIN_METRICS)}, or package.module.function, but got {name!r}")
        return metrics

    def metric_keys(self) -> list[str]:
        """Names of the reported metrics that a sweep or a monitor may use."""
        return ["val_loss", "train_loss"] + [f"val_{m.rsplit('.', 1)[-1]}" for m in self.metrics]

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, value: Any) -> Any:
        if not (isinstance(value, bool) or value in COMPILE_MODES):
            raise ValueError(f"must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
                             f"but got {value!r}")
        return value

    @model_validator(mode="after")
    def _criterion_config_needs_a_criterion(self) -> "RunConfig":
        if self.criterion is None and self.criterion_config:
            raise _KeyedError("criterion_config", "must be empty when run.criterion is null (it configures the "
                              "criterion)", self.criterion_config, ["{}"])
        return self

    @model_validator(mode="after")
    def _monitors_exist(self) -> "RunConfig":
        keys = self.metric_keys()
        for section in ("early_stopping_config", "checkpoint_config"):
            monitor = getattr(self, section).monitor
            if monitor not in keys:
                raise _KeyedError(f"{section}.monitor", "must name a reported metric", monitor, keys)
        return self


# --- sweep: how Ray Tune searches ---------------------------------------------------------

class _RangeParam(Strict):
    """A numeric range: low < high, low > 0 when log, log and step exclusive."""

    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log, self.step)
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]
    low: float
    high: float
    step: PositiveFloat | None = None


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int
    step: PositiveInt | None = None


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[Any]
    # per-choice sub-spaces (a conditional space): {choice: {dotted key: param}}, sampled only when
    # the choice is (Optuna's define-by-run; each trial holds only the parameters it used)
    subspaces: dict[str, dict[str, "Param"]] = {}

    @field_validator("choices")
    @classmethod
    def _choices(cls, choices: list[Any]) -> list[Any]:
        if not choices:
            raise ValueError("at least one choice must be given, but got []")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError("each choice must be null, true/false, a number or a string (what Optuna's "
                                 f"CategoricalDistribution stores), but got {choice!r} in {choices}")
        kinds = {_kind(c) for c in choices if c is not None}  # null may join any one type (optional)
        if len(kinds) > 1:
            raise ValueError(f"choices must all be of one type (null aside), but got types {sorted(kinds)} "
                             f"in {choices}")
        if len({repr(c) for c in choices}) != len(choices):
            raise ValueError(f"choices must be distinct, but got {choices}")
        return choices

    @model_validator(mode="after")
    def _subspaces_of_choices(self) -> "CategoricalParam":
        named = [str(c) for c in self.choices]
        for choice in self.subspaces:
            if choice not in named:
                raise _KeyedError(f"subspaces.{choice}", "must be one of the parameter's choices", choice, named)
        return self


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _check_range(low, high, log, step) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"low and high must be finite, but got low={low}, high={high}")
    if not low < high:
        raise ValueError(f"low < high must hold, but got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"low > 0 must hold when log is true, but got low={low}")
    if log and step is not None:
        raise ValueError(f"log and step cannot be used together, but got log=true, step={step}")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]
PARAM_TYPES = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}
CategoricalParam.model_rebuild()


def flat_params(space: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of a search space, those of the sub-spaces included, by dotted key."""
    found = {}
    for key, param in space.items():
        found[key] = param
        for subspace in getattr(param, "subspaces", {}).values():
            found.update(flat_params(subspace))
    return found


def is_conditional(space: dict[str, Any]) -> bool:
    """Whether some parameter is searched only for some choice of another (a sub-space)."""
    return any(getattr(param, "subspaces", None) for param in space.values())


class SamplerConfig(BaseModel):
    """`optuna.samplers.<name>(**rest)`."""

    model_config = ConfigDict(extra="allow")
    name: str = "TPESampler"

    @property
    def kwargs(self) -> dict:
        return dict(self.model_extra or {})


class SchedulerConfig(BaseModel):
    """A trial scheduler by name with its keyword arguments."""

    model_config = ConfigDict(extra="allow")
    name: Literal[SCHEDULERS] = "asha"

    @property
    def kwargs(self) -> dict:
        return dict(self.model_extra or {})


class ResourcesConfig(Strict):
    """What one trial asks for. With `workers: N > 1` the trial trains data-parallel on N Ray Train
    workers and `cpu`/`gpu` are per worker (`tuneloop.tune.distributed`); `workers: 1` is one process."""

    workers: PositiveInt = 1
    cpu: PositiveFloat = 1
    gpu: NonNegativeFloat = 0

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError(f"a gpu share above 1 must be a whole number, but got {gpu}")
        return gpu


LOGGERS = ("tensorboard", "mlflow")  # sweep.loggers (tuneloop.tune.loggers)


class LoggerConfig(Strict):
    """A tracker fed on the driver by one of Ray Tune's logger callbacks; `tensorboard` is the same
    as `{name: tensorboard}`. The MLflow options default to MLFLOW_TRACKING_URI (else an SQLite
    store in the experiment directory) and `run.name`."""

    name: Literal[LOGGERS]
    tracking_uri: str | None = None     # mlflow only
    experiment_name: str | None = None  # mlflow only

    @model_validator(mode="before")
    @classmethod
    def _a_name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _options_of_mlflow(self) -> "LoggerConfig":
        for option in ("tracking_uri", "experiment_name"):
            if getattr(self, option) is not None and self.name != "mlflow":
                raise _KeyedError(option, f"is an option of the mlflow logger only (name: mlflow), not of "
                                  f"{self.name}", getattr(self, option))
        return self


class SweepConfig(Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: PositiveInt = 16
    max_concurrent_trials: PositiveInt = 2
    sampler: SamplerConfig = SamplerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources_per_trial: ResourcesConfig = ResourcesConfig()
    storage_path: str = "./results"     # Tune's storage: a local directory or s3://bucket/prefix
    s3_endpoint: str | None = None      # e.g. http://127.0.0.1:9000 (else AWS_ENDPOINT_URL or AWS)
    local_dir: str = "./results"        # the driver's files when storage_path is remote
    optuna_storage: str | None = None
    max_failures: NonNegativeInt = 2
    search_space: dict[str, Param] = {}
    points_to_evaluate: list[dict[str, Any]] = []  # configurations run first: {dotted key: value}
    warm_start_from: str | None = None  # an earlier sweep's experiment directory: its finished trials seed the study
    loggers: list[LoggerConfig] = []    # trackers beside result.json: tensorboard, mlflow (W&B: run.wandb_config)

    def params(self) -> dict[str, Any]:
        """Every searched parameter by dotted key, the conditional ones included."""
        return flat_params(self.search_space)

    @model_validator(mode="after")
    def _workers_with_a_scheduler_that_stops(self) -> "SweepConfig":
        # a pausing scheduler resumes (or clones) trials from Tune's checkpoints; a distributed trial's
        # checkpoints are its Train run's (tuneloop.tune.distributed), which Tune does not hold
        if self.resources_per_trial.workers > 1 and SCHEDULER_REGISTRY[self.scheduler.name].pauses:
            allowed = ", ".join(n for n, spec in SCHEDULER_REGISTRY.items() if not spec.pauses)
            raise _KeyedError("resources_per_trial.workers", f"workers == 1 must hold with the {self.scheduler.name} "
                              f"scheduler (it pauses or clones trials from Tune's checkpoints, and a distributed "
                              f"trial's are its Train run's; {allowed} stop trials without pausing them)",
                              self.resources_per_trial.workers)
        return self

    @model_validator(mode="after")
    def _each_logger_once(self) -> "SweepConfig":
        names = [logger.name for logger in self.loggers]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _KeyedError(f"loggers.{index}.name", "each logger must be named once", name,
                                  [n for n in LOGGERS if n not in names])
        return self

    @model_validator(mode="after")
    def _storage(self) -> "SweepConfig":
        scheme = self.storage_path.partition("://")[0] if "://" in self.storage_path else ""
        if scheme not in ("", "file", "s3"):
            raise _KeyedError("storage_path", "must be a local directory or an s3:// URI",
                              self.storage_path, ["./results", "/shared/nfs/results", "s3://bucket/prefix"])
        if scheme == "s3" and not self.storage_path.removeprefix("s3://").strip("/"):
            raise _KeyedError("storage_path", "an s3:// URI must name a bucket", self.storage_path,
                              ["s3://bucket", "s3://bucket/prefix"])
        if self.s3_endpoint is not None:
            if scheme != "s3":
                raise _KeyedError("s3_endpoint", "is only used with an s3:// storage_path",
                                  self.s3_endpoint, ["null"])
            # no user:password@ (credentials would be written to experiment.yaml): AWS_* variables
            if not re.fullmatch(r"https?://[^/\s@]+/?", self.s3_endpoint):
                raise _KeyedError("s3_endpoint", "must be http(s)://host[:port] (credentials come from the AWS_* "
                                  "variables, never from the file)", self.s3_endpoint,
                                  ["http://127.0.0.1:9000", "https://s3.example.com"])
        return self


class ExperimentConfig(Strict):
    run: RunConfig
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _sweep_refers_to_run(self) -> "ExperimentConfig":
        keys = self.run.metric_keys()
        if self.sweep.metric not in keys:
            raise _KeyedError("sweep.metric", "must name a reported metric", self.sweep.metric, keys)
        seen: dict[str, str] = {}
        for dotted, param, where in walk_params(self.sweep.search_space, "sweep.search_space"):
            if dotted in seen:
                raise _KeyedError(where, f"must be searched in one place only (it is also at {seen[dotted]})",
                                  dotted)
            seen[dotted] = where
            _check_run_key(self.run, dotted, where)
            _check_run_values(self.run, dotted, param, where)
        _check_points(self.sweep)
        return self


def walk_params(space: dict, prefix: str):
    """(dotted key, param, its key path in the file) of every parameter, sub-spaces included."""
    for dotted, param in space.items():
        yield dotted, param, f"{prefix}.{dotted}"
        for choice, subspace in getattr(param, "subspaces", {}).items():
            yield from walk_params(subspace, f"{prefix}.{dotted}.subspaces.{choice}")


def _check_points(sweep: "SweepConfig") -> None:
    """Each point of `points_to_evaluate` sets searched keys to values their parameters can take,
    and no key of a sub-space whose choice the point does not make."""
    params = sweep.params()
    for index, point in enumerate(sweep.points_to_evaluate):
        where = f"sweep.points_to_evaluate.{index}"
        for key, value in point.items():
            if key not in params:
                raise _KeyedError(f"{where}.{key}", "must be a key of sweep.search_space", key, list(params))
            rule = _outside(params[key], value)
            if rule:
                raise _KeyedError(f"{where}.{key}", rule, value)
        for dotted, param in sweep.search_space.items():
            _check_point_branch(point, dotted, param, where)


def _check_point_branch(point: dict, dotted: str, param, where: str) -> None:
    for choice, subspace in getattr(param, "subspaces", {}).items():
        chosen = dotted in point and str(point[dotted]) == choice
        for key in flat_params(subspace):
            if key in point and not chosen:
                raise _KeyedError(f"{where}.{key}", f"is searched only when {dotted} is {choice}, which this point "
                                  f"does not set", point.get(dotted, "(not set)"))
        for key, sub in subspace.items():
            _check_point_branch(point, key, sub, where)


def _outside(param, value) -> str | None:
    """Why `value` is not a value of `param` (None when it is)."""
    if isinstance(param, CategoricalParam):
        return None if value in param.choices else f"must be one of the choices {param.choices}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if isinstance(param, IntParam) and value != int(value):
        return "must be a whole number"
    if not param.low <= value <= param.high:
        return f"must be within low={param.low} and high={param.high}"
    return None


def _check_run_key(run: RunConfig, dotted: str, key: str) -> None:
    """A search-space key (at `key` in the file) must reach a field of `run` (free-form `*_config`
    dicts take any sub-key)."""
    head, _, rest = dotted.partition(".")
    fields = [f for f in RunConfig.model_fields if f != "name"]
    if head == "callbacks":  # callbacks.<index>.<keyword argument of that callback's class>
        index, _, name = rest.partition(".")
        valid = [f"callbacks.{i}.<argument>" for i in range(len(run.callbacks))]
        if not (index.isdigit() and int(index) < len(run.callbacks)) or not name or "." in name:
            raise _KeyedError(key, "must be callbacks.<index into run.callbacks>.<keyword argument>", dotted,
                              valid or ["(run.callbacks is empty)"])
        if name == "class":
            raise _KeyedError(key, "a callback's class cannot be searched, only its keyword arguments", dotted,
                              valid)
        return
    if head not in fields:
        raise _KeyedError(key, "must be a dotted path into run", dotted, fields)
    value = getattr(run, head)
    if isinstance(value, BaseModel):
        sub = list(type(value).model_fields)
        if rest not in sub:
            raise _KeyedError(key, f"run.{head} has no key {rest!r}", dotted, [f"{head}.{s}" for s in sub])
    elif rest and not isinstance(value, dict):
        raise _KeyedError(key, f"run.{head} is not a mapping", dotted, fields)
    elif not rest and isinstance(value, dict):
        raise _KeyedError(key, f"run.{head} is a mapping: name one of its keys", dotted,
                          [f"{head}.{k}" for k in value])


def _check_run_values(run: RunConfig, dotted: str, param, where: str) -> None:
    """Every value a search-space parameter can take must be valid for the typed field of `run` it
    sets (`batch_size`, `epochs`, `early_stopping_config.patience`, ...): a trial would fail on it.
    Free-form `*_config` dicts are checked against the user's code by `check_imports`/the preflight."""
    head, _, rest = dotted.partition(".")
    if head == "callbacks":  # the callback's own arguments: checked against its class by check_imports
        return
    value = getattr(run, head)
    model, name = (type(value), rest) if isinstance(value, BaseModel) else (RunConfig, head)
    if isinstance(value, dict) or name not in model.model_fields:
        return
    field = model.model_fields[name]
    adapter = TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
    if isinstance(param, CategoricalParam):
        candidates = [("choices", choice) for choice in param.choices]
    else:
        candidates = [("low", param.low), ("high", param.high)]
        if isinstance(param, FloatParam) and param.step is None:  # a float between the bounds
            candidates.append(("type", param.low + (param.high - param.low) * 0.371))
    for field_name, candidate in candidates:
        try:
            adapter.validate_python(candidate)
        except ValidationError as exc:
            detail = exc.errors()[0]
            kind = detail["type"]
            rule = RULES[kind].format(**(detail.get("ctx") or {})) if kind in RULES else detail["msg"]
            if kind == "string_pattern_mismatch" and (detail.get("ctx") or {}).get("pattern") == DEVICE_PATTERN:
                rule = "must be a device name: " + ", ".join(DEVICES)
            if field_name == "type":
                raise _KeyedError(f"{where}.type", f"run.{dotted} {rule}: every value between low "
                                  "and high must be valid for it (use type: int)", candidate, ["int"]) from None
            raise _KeyedError(f"{where}.{field_name}", f"every value must be valid for run.{dotted}, "
                              f"which {rule}", candidate) from None


class _KeyedError(ValueError):
    """A validation failure that knows its own key path (raised inside model validators)."""

    def __init__(self, key: str, rule: str, value: Any, choices=None):
        self.key, self.rule, self.value, self.choices = key, rule, value, choices
        super().__init__(f"{rule}, but got {value!r}")


RULES = {  # pydantic error type → the rule as we state it
    "int_parsing": "must be an integer", "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number", "float_type": "must be a number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping", "list_type": "must be a list",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "finite_number": "must be a finite number",
}
