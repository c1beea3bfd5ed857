"""Bad input, table-driven: every mistake in an experiment file or a flag, through the
`tuneloop` command, gets exit status 2 and one line naming the file, the key path, the rule, the
value found and (where the set is finite) the valid choices; no traceback; Ray not started; nothing
written (the working directory, where the experiment's storage would be, is byte-identical).

Most cases run in-process (`cli.main`) with `ray.init` replaced by a test failure, so that a case
that would start Ray fails loudly instead of starting it; a few run through the real console
script with `RAY_TMPDIR` pointing into the test's directory, which must stay absent. The user's
broken data loaders and models are in tests/support/bad_recipes.py.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tl_s3 import free_port
from tuneloop import cli

FILE = "exp.yaml"
NAME = "bad"

BASE = {
    "run": {
        "name": NAME, "data": "bad_recipes.good_data", "net": "bad_recipes.Net",
        "optimizer": "torch.optim.AdamW", "optimizer_config": {"lr": 0.01},
        "scheduler": "torch.optim.lr_scheduler.StepLR", "scheduler_config": {"step_size": 2},
        "criterion": "torch.nn.CrossEntropyLoss", "metrics": ["accuracy"],
        "epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu",
    },
    "sweep": {
        "metric": "val_loss", "mode": "min", "num_samples": 2, "max_concurrent_trials": 1,
        "sampler": {"name": "TPESampler", "seed": 0}, "scheduler": {"name": "asha", "grace_period": 1},
        "resources_per_trial": {"cpu": 1, "gpu": 0}, "storage_path": "./results",
        "search_space": {"optimizer_config.lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
                         "batch_size": {"type": "categorical", "choices": [8, 16]}},
    },
}
BOTH, SWEEP = ("validate", "sweep"), ("sweep",)


@dataclass
class Case:
    id: str
    change: Callable | str | None  # edits the experiment dict in place (run, sweep, ctx), or raw file text
    key: str | None  # the key path the message must name (None: the file as a whole)
    rule: str
    value: str | None = None
    choices: tuple = ()
    args: tuple = ()
    commands: tuple = BOTH
    setup: Callable | None = None  # (tmp_path) -> None, before the snapshot

    def __repr__(self):
        return self.id


def with_callback(change):
    """`change`, with one user callback (bad_recipes.ClipAt) in run.callbacks."""
    def apply(run, sweep, ctx):
        run["callbacks"] = [{"class": "bad_recipes.ClipAt", "max_norm": 1.0}]
        change(run, sweep, ctx)
    return apply


def run_(**changes):
    return lambda run, sweep, ctx: run.update(changes)


def sweep_(**changes):
    return lambda run, sweep, ctx: sweep.update(changes)


def space(key, param):
    return lambda run, sweep, ctx: sweep["search_space"].__setitem__(key, param)


def data(loader):
    return run_(data=f"bad_recipes.{loader}")


def existing_experiment(tmp_path: Path) -> None:
    old = tmp_path / "results" / NAME
    (old / "trial_0001").mkdir(parents=True)
    (old / "optuna.db").write_bytes(b"SQLite format 3\0 an old study")
    (old / "experiment.yaml").write_text("run: {name: bad}\n")
    (old / "trial_0001" / "result.json").write_text('{"epoch": 0}\n')


def old_study(tmp_path: Path) -> None:
    """An Optuna study named like the experiment in a storage outside the experiment directory."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line in the command's output
    try:
        study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{tmp_path / 'studies.db'}")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    finally:
        optuna.logging.set_verbosity(verbosity)


def earlier_sweep(tmp_path: Path) -> None:
    """An earlier sweep's directory whose search space differs (batch_size is not searched)."""
    earlier = copy.deepcopy(BASE)
    earlier["sweep"]["search_space"].pop("batch_size")
    earlier["run"]["name"] = "earlier"
    (tmp_path / "results" / "earlier").mkdir(parents=True)
    (tmp_path / "results" / "earlier" / "experiment.yaml").write_text(yaml.safe_dump(earlier))


def blocked_storage(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the storage directory should go\n")


CASES = [
    # --- the file itself ---------------------------------------------------------------------
    Case("malformed_yaml", "run:\n  name: x\n   epochs: [1, 2\n", "line 3, column 10",
         "is not valid YAML: mapping values are not allowed here", "'   epochs: [1, 2'"),
    Case("not_a_mapping", "- just\n- a list\n", None, "an experiment file must be a mapping", "list",
         ("'run'", "'sweep'")),
    Case("duplicate_key", "run:\n  epochs: 3\n  epochs: 4\n", "line 3, column 3",
         "is not valid YAML: duplicate key 'epochs'", "'  epochs: 4'"),
    # --- schema ------------------------------------------------------------------------------
    Case("unknown_key", run_(epochz=3), "run.epochz", "unknown key", "'epochz'", ("'epochs'", "'batch_size'")),
    Case("unknown_section", lambda r, s, c: s.update(searchspace={}), "sweep.searchspace", "unknown key",
         "'searchspace'", ("'search_space'",)),
    Case("missing_required_key", lambda r, s, c: r.pop("net"), "run.net", "required key is missing"),
    Case("wrong_type", run_(epochs="ten"), "run.epochs", "must be an integer", "'ten'"),
    Case("not_positive", run_(epochs=0), "run.epochs", "must be > 0", "0"),
    Case("bad_device", run_(device="gpu"), "run.device", "must be a device name", "'gpu'",
         ("'auto'", "'cpu'", "'cuda'", "'cuda:N'")),
    Case("not_an_import_path", run_(criterion="CrossEntropyLoss"), "run.criterion",
         "must be an import path like package.module.Name", "'CrossEntropyLoss'"),
    Case("unknown_import_attribute", run_(optimizer="torch.optim.Adamw"), "run.optimizer",
         "torch.optim has no attribute 'Adamw'", "'torch.optim.Adamw'", ("'AdamW'", "'SGD'")),
    Case("missing_module", run_(net="nosuchpkg.models.Net"), "run.net", "no module named 'nosuchpkg'",
         "'nosuchpkg.models.Net'"),
    Case("data_in_main", run_(data="__main__.make_data"), "run.data",
         "must be importable by Ray's workers, which cannot import __main__ (a notebook, or a script run "
         "directly): define it in a module of an installed package or of a directory on PYTHONPATH",
         "'__main__.make_data'"),
    Case("unknown_optimizer_kwarg", lambda r, s, c: r["optimizer_config"].update(lrate=0.1),
         "run.optimizer_config.lrate", "unknown keyword argument of torch.optim.AdamW", "'lrate'",
         ("'lr'", "'betas'", "'weight_decay'")),
    Case("unknown_net_kwarg", run_(net_config={"hidden": 32}), "run.net_config.hidden",
         "unknown keyword argument of bad_recipes.Net", "'hidden'", ("'outputs'", "'squeeze'")),
    Case("scheduler_missing_argument", run_(scheduler_config={}), "run.scheduler_config",
         "torch.optim.lr_scheduler.StepLR requires keyword argument(s) step_size", "{}"),
    Case("unknown_metric_name", run_(metrics=["acuracy"]), "run.metrics",
         "a metric must be a built-in name or an import path", "'acuracy'", ("accuracy", "mae")),
    Case("monitor_not_reported", run_(early_stopping_config={"monitor": "acc"}), "run.early_stopping_config.monitor",
         "must name a reported metric", "'acc'", ("'val_loss'", "'val_accuracy'")),
    Case("unknown_sweep_metric", sweep_(metric="val_acc"), "sweep.metric", "must name a reported metric",
         "'val_acc'", ("'val_loss'", "'val_accuracy'")),
    Case("bad_mode", sweep_(mode="minimize"), "sweep.mode", "must be one of the valid choices", "'minimize'",
         ("'min'", "'max'")),
    Case("zero_samples", sweep_(num_samples=0), "sweep.num_samples", "must be > 0", "0"),
    Case("unknown_scheduler", sweep_(scheduler={"name": "ashaa"}), "sweep.scheduler.name",
         "must be one of the valid choices", "'ashaa'", ("'asha'", "'fifo'", "'hyperband'", "'pfl'")),
    Case("unknown_scheduler_kwarg", sweep_(scheduler={"name": "asha", "grace_perod": 2}),
         "sweep.scheduler.grace_perod", "unknown keyword argument of asha scheduler", "'grace_perod'",
         ("'grace_period'", "'reduction_factor'")),
    Case("unknown_sampler", sweep_(sampler={"name": "TPE"}), "sweep.sampler.name",
         "must name a sampler class of optuna.samplers", "'TPE'", ("'TPESampler'", "'RandomSampler'")),
    Case("unknown_sampler_kwarg", sweep_(sampler={"name": "TPESampler", "seeed": 1}), "sweep.sampler.seeed",
         "unknown keyword argument of optuna.samplers.TPESampler", "'seeed'", ("'seed'", "'n_startup_trials'")),
    Case("gpu_share_above_one_not_whole", sweep_(resources_per_trial={"cpu": 1, "gpu": 1.5}),
         "sweep.resources_per_trial.gpu", "a gpu share above 1 must be a whole number", "1.5"),
    Case("workers_not_whole", sweep_(resources_per_trial={"workers": 1.5, "cpu": 1}),
         "sweep.resources_per_trial.workers", "must be a whole number", "1.5"),
    Case("zero_workers", sweep_(resources_per_trial={"workers": 0, "cpu": 1}),
         "sweep.resources_per_trial.workers", "must be > 0", "0"),
    Case("workers_with_a_pausing_scheduler", sweep_(resources_per_trial={"workers": 2, "cpu": 0.5},
                                                    scheduler={"name": "pbt"}),
         "sweep.resources_per_trial.workers", "workers == 1 must hold with the pbt scheduler (it pauses or clones "
         "trials from Tune's checkpoints, and a distributed trial's are its Train run's; fifo, asha, pfl stop "
         "trials without pausing them)", "2"),
    # --- the search space --------------------------------------------------------------------
    Case("low_not_below_high", space("optimizer_config.lr", {"type": "float", "low": 0.1, "high": 0.0001}),
         "sweep.search_space.optimizer_config.lr", "low < high must hold", "low=0.1, high=0.0001"),
    Case("log_with_nonpositive_low", space("optimizer_config.lr", {"type": "float", "low": 0, "high": 0.1, "log": True}),
         "sweep.search_space.optimizer_config.lr", "low > 0 must hold when log is true", "low=0"),
    Case("int_with_fractional_bound", space("batch_size", {"type": "int", "low": 8, "high": 16.5}),
         "sweep.search_space.batch_size.high", "must be a whole number", "16.5"),
    Case("unknown_param_type", space("batch_size", {"type": "choice", "choices": [8, 16]}),
         "sweep.search_space.batch_size.type", "type must be one of the valid choices", "'choice'",
         ("'float'", "'int'", "'categorical'")),
    Case("empty_choices", space("batch_size", {"type": "categorical", "choices": []}),
         "sweep.search_space.batch_size.choices", "at least one choice must be given", "[]"),
    Case("categorical_mixed_types", space("batch_size", {"type": "categorical", "choices": [8, "big"]}),
         "sweep.search_space.batch_size.choices", "choices must all be of one type", "['number', 'str']"),
    Case("categorical_unstorable_type", space("net_config.outputs", {"type": "categorical", "choices": [[3], [3, 3]]}),
         "sweep.search_space.net_config.outputs.choices",
         "each choice must be null, true/false, a number or a string", "[3]"),
    Case("search_key_not_in_run", space("optimiser_config.lr", {"type": "float", "low": 0.01, "high": 0.1}),
         "sweep.search_space.optimiser_config.lr", "must be a dotted path into run", "'optimiser_config.lr'",
         ("'optimizer_config'", "'batch_size'")),
    Case("search_key_not_in_sub_config", space("early_stopping_config.patiense", {"type": "int", "low": 2, "high": 9}),
         "sweep.search_space.early_stopping_config.patiense", "run.early_stopping_config has no key 'patiense'",
         "'early_stopping_config.patiense'", ("'early_stopping_config.patience'",)),
    Case("search_key_not_an_optimizer_kwarg", space("optimizer_config.lrate", {"type": "float", "low": 0.01, "high": 0.1}),
         "sweep.search_space.optimizer_config.lrate", "unknown keyword argument of torch.optim.AdamW", "'lrate'",
         ("'lr'", "'weight_decay'")),
    Case("search_key_callback_out_of_range", with_callback(space("callbacks.3.max_norm", {"type": "float", "low": 0.1, "high": 1})),
         "sweep.search_space.callbacks.3.max_norm",
         "must be callbacks.<index into run.callbacks>.<keyword argument>", "'callbacks.3.max_norm'",
         ("'callbacks.0.<argument>'",)),
    Case("search_key_not_a_callback_argument",
         with_callback(space("callbacks.0.max_nrom", {"type": "float", "low": 0.1, "high": 1})),
         "sweep.search_space.callbacks.0.max_nrom", "unknown keyword argument of bad_recipes.ClipAt", "'max_nrom'",
         ("'max_norm'",)),
    Case("subspace_of_no_choice", space("optimizer", {"type": "categorical",
                                                      "choices": ["torch.optim.AdamW", "torch.optim.SGD"],
                                                      "subspaces": {"torch.optim.Adam": {}}}),
         "sweep.search_space.optimizer.subspaces.torch.optim.Adam", "must be one of the parameter's choices",
         "'torch.optim.Adam'", ("'torch.optim.AdamW'", "'torch.optim.SGD'")),
    Case("subspace_key_searched_twice", space("optimizer", {
        "type": "categorical", "choices": ["torch.optim.AdamW", "torch.optim.SGD"],
        "subspaces": {"torch.optim.SGD": {"optimizer_config.lr": {"type": "float", "low": 0.01, "high": 0.5}}}}),
         "sweep.search_space.optimizer.subspaces.torch.optim.SGD.optimizer_config.lr",
         "must be searched in one place only (it is also at sweep.search_space.optimizer_config.lr)",
         "'optimizer_config.lr'"),
    Case("subspace_key_not_an_optimizer_kwarg", space("optimizer", {
        "type": "categorical", "choices": ["torch.optim.AdamW", "torch.optim.SGD"],
        "subspaces": {"torch.optim.AdamW": {"optimizer_config.momentum": {"type": "float", "low": 0.5, "high": 0.9}}}}),
         "sweep.search_space.optimizer.subspaces.torch.optim.AdamW.optimizer_config.momentum",
         "unknown keyword argument of torch.optim.AdamW (when optimizer is torch.optim.AdamW)", "'momentum'"),
    Case("point_outside_the_space", sweep_(points_to_evaluate=[{"optimizer_config.lr": 5.0}]),
         "sweep.points_to_evaluate.0.optimizer_config.lr", "must be within low=0.001 and high=0.1", "5.0"),
    Case("point_key_not_searched", sweep_(points_to_evaluate=[{"optimizer_config.eps": 1e-8}]),
         "sweep.points_to_evaluate.0.optimizer_config.eps", "must be a key of sweep.search_space", "'optimizer_config.eps'",
         ("'optimizer_config.lr'", "'batch_size'")),
    Case("warm_start_not_a_sweep", sweep_(warm_start_from="elsewhere"), "sweep.warm_start_from",
         "must be the experiment directory of an earlier sweep (holding experiment.yaml)", "'elsewhere'",
         commands=SWEEP),
    Case("warm_start_other_space", sweep_(warm_start_from="results/earlier"), "sweep.warm_start_from",
         "must be a sweep of the same search space", "'results/earlier'", commands=SWEEP, setup=earlier_sweep),
    Case("pbt_with_points", sweep_(points_to_evaluate=[{"optimizer_config.lr": 0.01}],
                                   scheduler={"name": "pbt", "perturbation_interval": 1}),
         "sweep.points_to_evaluate", "is not available with the pbt scheduler", None, ("'asha'",), commands=SWEEP),
    Case("search_value_invalid_for_run", space("batch_size", {"type": "categorical", "choices": [16, 0]}),
         "sweep.search_space.batch_size.choices", "every value must be valid for run.batch_size, which must be > 0",
         "0"),
    Case("search_float_for_int_key", space("epochs", {"type": "float", "low": 1, "high": 4}),
         "sweep.search_space.epochs.type", "run.epochs must be a whole number", None, ("'int'",)),
    # --- flags -------------------------------------------------------------------------------
    Case("set_wrong_type", None, "run.batch_size", "must be an integer", "'many'", args=("--set", "run.batch_size=many")),
    Case("set_unknown_key", None, "run.epochz", "unknown key", "'epochz' (from --set run.epochz=3)", ("'epochs'",),
         args=("--set", "run.epochz=3")),
    Case("set_without_equals", None, "--set", "--set takes KEY=VALUE with a dotted key", "'run.epochs'",
         ("'run.epochs=5'",), args=("--set", "run.epochs")),
    # --- the user's data, model, criterion and optimizer: one batch forward/backward ---------
    Case("data_mismatched_lengths", data("mismatched_lengths"), "run.data",
         "the train split's inputs and targets must have the same length",
         "inputs of shape (32, 8) float32, targets of shape (31,) int64"),
    Case("data_loader_raises", data("raises_in_constructor"), "run.data",
         "bad_recipes.raises_in_constructor() must not raise", "AssertionError: Size mismatch between tensors"),
    Case("data_empty_train_split", data("empty_train"), "run.data",
         "the train split of bad_recipes.empty_train() must not be empty", "0 samples"),
    Case("data_empty_val_split", data("empty_val"), "run.data",
         "the val split of bad_recipes.empty_val() must not be empty", "0 samples"),
    Case("data_not_a_pair", data("not_a_pair"), "run.data",
         "bad_recipes.not_a_pair() must return a pair (train, val) of datasets", "a TensorDataset"),
    Case("data_ragged_samples", data("ragged_samples"), "run.data",
         "taking the first training batch (from a Ragged) must not raise",
         "RuntimeError: stack expects each tensor to be equal size"),
    Case("data_shape_vs_model", data("wrong_features"), "run.net",
         "the model's forward pass on inputs of shape (16, 5) float32 must not raise",
         "RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x5 and 8x3)"),
    Case("output_vs_criterion_classes", run_(net_config={"outputs": 2}), "run.criterion",
         "torch.nn.CrossEntropyLoss on the model's outputs of shape (16, 2) float32 and targets of shape (16,) int64 "
         "must not raise", "IndexError: Target 2 is out of bounds"),
    Case("output_vs_criterion_shape", run_(net_config={"squeeze": True}), "run.criterion",
         "torch.nn.CrossEntropyLoss on the model's outputs of shape (16,) float32 and targets of shape (16,) int64 "
         "must not raise", "RuntimeError: Expected floating point type for target"),
    Case("criterion_not_scalar", run_(criterion_config={"reduction": "none"}), "run.criterion",
         "torch.nn.CrossEntropyLoss must return a scalar loss (one number per batch) on the model's outputs of "
         "shape (16, 3) float32 and targets of shape (16,) int64", "a loss of shape (16,) float32"),
    Case("net_config_bad_value", run_(net_config={"outputs": "three"}), "run.net_config",
         "bad_recipes.Net(outputs='three') must not raise", "TypeError: empty(): argument 'size'"),
    Case("optimizer_bad_value", run_(optimizer_config={"lr": -1.0}), "run.optimizer_config",
         "torch.optim.AdamW(model.parameters(), lr=-1.0) must not raise", "ValueError: Invalid learning rate: -1.0"),
    # --- the trainer, precision, loaders (run.trainer, run.precision, run.loader_config, ...) ---
    Case("dict_batch_with_the_default_step", data("dict_batches"), "run.data",
         "a training batch must be a pair (inputs, targets) for the default Trainer.compute_loss (for other "
         "batches, set run.trainer to a Trainer subclass that overrides compute_loss)",
         "a dict: {features: shape (16, 8) float32, labels: shape (16,) int64}"),
    Case("trainer_not_a_trainer", run_(trainer="bad_recipes.NotATrainer"), "run.trainer",
         "must name a subclass of tuneloop.trainer.Trainer", "bad_recipes.NotATrainer (a type)"),
    Case("criterion_null_with_the_default_step", run_(criterion=None), "run.criterion",
         "must name a loss when the trainer (tuneloop.trainer.Trainer) does not override compute_loss", "null",
         ("'torch.nn.CrossEntropyLoss'",)),
    Case("compute_loss_returns_two_values", run_(data="bad_recipes.dict_batches", criterion=None,
                                                 trainer="bad_recipes.TwoValueTrainer"), "run.trainer",
         "bad_recipes.TwoValueTrainer.compute_loss must return a tuple (loss, outputs, targets)", "a tuple of length 2"),
    Case("compute_loss_raises", run_(data="bad_recipes.dict_batches", criterion=None,
                                     trainer="bad_recipes.KeyErrorTrainer"), "run.trainer",
         "bad_recipes.KeyErrorTrainer.compute_loss on a batch of {features: shape (16, 8) float32, labels: shape "
         "(16,) int64} must not raise", "KeyError: 'input_ids'"),
    Case("collate_fn_not_a_batch", run_(collate_fn="bad_recipes.identity", data="bad_recipes.dict_batches",
                                        criterion=None, trainer="bad_recipes.DictTrainer"), "run.trainer",
         "bad_recipes.DictTrainer.compute_loss on a batch of type list must not raise", "TypeError: list indices"),
    Case("collate_fn_missing", run_(collate_fn="bad_recipes.collate"), "run.collate_fn",
         "bad_recipes has no attribute 'collate'", "'bad_recipes.collate'"),
    Case("criterion_config_without_criterion", run_(criterion=None, criterion_config={"reduction": "sum"},
                                                    trainer="bad_recipes.DictTrainer"), "run.criterion_config",
         "must be empty when run.criterion is null (it configures the criterion)", "{'reduction': 'sum'}", ("'{}'",)),
    Case("unknown_precision", run_(precision="fp8"), "run.precision", "must be one of the valid choices", "'fp8'",
         ("'fp32'", "'bf16'", "'fp16'")),
    Case("accumulate_steps_zero", run_(accumulate_steps=0), "run.accumulate_steps", "must be > 0", "0"),
    Case("grad_clip_norm_negative", run_(grad_clip_norm=-1.0), "run.grad_clip_norm", "must be > 0", "-1.0"),
    Case("unknown_compile_mode", run_(compile="fastest"), "run.compile",
         "must be true, false or a torch.compile mode (default, reduce-overhead, max-autotune, "
         "max-autotune-no-cudagraphs)", "'fastest'"),
    Case("persistent_workers_without_workers", run_(loader_config={"persistent_workers": True}),
         "run.loader_config.persistent_workers", "needs loader worker processes (num_workers > 0)", "true",
         ("'num_workers: 2'",)),
    Case("unknown_loader_option", run_(loader_config={"num_wokers": 2}), "run.loader_config.num_wokers",
         "unknown key", "'num_wokers'", ("'num_workers'", "'pin_memory'")),
    # --- what only a sweep needs: search space, storage, resources, a new experiment directory -
    Case("sweep_without_search_space", sweep_(search_space={}), "sweep.search_space",
         "a sweep needs at least one parameter to search", "{}", ("optimizer_config.lr",), commands=SWEEP),
    Case("storage_path_scheme", sweep_(storage_path="gs://bucket/x"), "sweep.storage_path",
         "must be a local directory or an s3:// URI", "'gs://bucket/x'", ("'./results'", "'s3://bucket/prefix'")),
    Case("s3_endpoint_with_local_storage", sweep_(s3_endpoint="http://127.0.0.1:9000"), "sweep.s3_endpoint",
         "is only used with an s3:// storage_path", "'http://127.0.0.1:9000'", ("'null'",)),
    Case("storage_path_not_writable", sweep_(storage_path="blocker/results"), "sweep.storage_path",
         "must be a directory this user can create and write (", "'blocker/results'",
         commands=SWEEP, setup=blocked_storage),
    Case("storage_path_cannot_be_created", sweep_(storage_path="/proc/tuneloop-no"), "sweep.storage_path",
         "must be a directory this user can create and write (/proc/tuneloop-no", "'/proc/tuneloop-no'",
         commands=SWEEP),
    Case("lock_file_cannot_be_opened", None, "sweep.storage_path",
         "must be a directory this user can create and write (", "'./results'", commands=SWEEP,
         setup=lambda tmp: (tmp / "results" / NAME / ".tuneloop.lock").mkdir(parents=True)),
    Case("storage_path_read_only", sweep_(storage_path="readonly/results"), "sweep.storage_path",
         "is not writable", "'readonly/results'", commands=SWEEP,
         setup=lambda tmp: (tmp / "readonly").mkdir(mode=0o555)),
    Case("s3_bucket_missing", lambda r, s, c: s.update(storage_path="s3://no-such-bucket/sweeps",
                                                       s3_endpoint=c["s3_endpoint"]),
         "sweep.storage_path", "the bucket 'no-such-bucket' does not exist", "'s3://no-such-bucket/sweeps'",
         commands=SWEEP),
    Case("existing_experiment_directory", None, "sweep.storage_path",
         "the experiment directory already exists; continue it with `tuneloop resume", "results/bad",
         ("--overwrite",), commands=SWEEP, setup=existing_experiment),
    Case("optuna_study_exists", sweep_(optuna_storage="sqlite:///studies.db"), "sweep.optuna_storage",
         "already holds a study named 'bad' (run.name), which a new sweep would merge into; continue it with "
         "`tuneloop resume EXPERIMENT_DIR`, change run.name, or start over with --overwrite", "'sqlite:///studies.db'",
         commands=SWEEP, setup=old_study),
    Case("optuna_storage_unreadable", sweep_(optuna_storage="postgresql://tuneloop@127.0.0.1:1/studies"),
         "sweep.optuna_storage", "must be an Optuna storage this machine can read",
         "'postgresql://tuneloop@127.0.0.1:1/studies'", commands=SWEEP),
    Case("more_cpus_than_the_machine", sweep_(resources_per_trial={"cpu": 4096, "gpu": 0}),
         "sweep.resources_per_trial.cpu", "must hold (this machine has", "cpu=4096",
         commands=SWEEP),
    Case("workers_without_the_distributed_extra", sweep_(resources_per_trial={"workers": 2, "cpu": 0.5}),
         "sweep.resources_per_trial.workers", "workers > 1 needs Ray's State API, which is not installed: "
         "pip install 'tuneloop[distributed]'", "workers=2", commands=SWEEP),
    Case("grace_period_past_the_last_epoch", sweep_(scheduler={"name": "asha", "grace_period": 2}),
         "sweep.scheduler.grace_period", "grace_period < run.epochs must hold (a trial is first compared with the "
         "others after grace_period epochs; at or past its last epoch none is ever stopped)",
         "grace_period=2, run.epochs=2"),
    Case("unknown_logger", sweep_(loggers=["tensorbord"]), "sweep.loggers.0.name", "must be one of the valid choices",
         "'tensorbord'", ("'tensorboard'", "'mlflow'")),
    Case("mlflow_option_of_another_logger",
         sweep_(loggers=[{"name": "tensorboard", "tracking_uri": "http://127.0.0.1:5000"}]),
         "sweep.loggers.0.tracking_uri", "is an option of the mlflow logger only (name: mlflow), not of tensorboard",
         "'http://127.0.0.1:5000'"),
    Case("mlflow_logger_without_mlflow", sweep_(loggers=["tensorboard", "mlflow"]), "sweep.loggers.1.name",
         "the mlflow logger needs MLflow, which is not installed: pip install 'tuneloop[mlflow]'", "'mlflow'"),
    Case("mlflow_tracking_server_unreachable",
         lambda r, s, c: s.update(loggers=[{"name": "mlflow", "tracking_uri": f"http://127.0.0.1:{free_port()}"}]),
         "sweep.loggers.0.tracking_uri", "must be an MLflow tracking server this machine can reach (",
         "'http://127.0.0.1:"),
    Case("more_gpus_than_the_machine", sweep_(resources_per_trial={"cpu": 1, "gpu": 64}),
         "sweep.resources_per_trial.gpu", "CUDA GPU(s) here; the sweep runs on an embedded local Ray",
         "gpu=64", commands=SWEEP),
    Case("more_workers_than_the_machine", sweep_(resources_per_trial={"workers": 4096, "cpu": 1}),
         "sweep.resources_per_trial", "workers x cpu + 0.01 (the Train run's driver) <=", "workers=4096, cpu=1, gpu=0",
         commands=SWEEP),
]
assert len({c.id for c in CASES}) == len(CASES) >= 30


def experiment_text(case: Case, ctx: dict) -> str:
    if isinstance(case.change, str):
        return case.change
    experiment = copy.deepcopy(BASE)
    if case.change is not None:
        case.change(experiment["run"], experiment["sweep"], ctx)
    return yaml.safe_dump(experiment, sort_keys=False)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def check_message(err: str, case: Case, file: str = FILE) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    head = f"error: {file}: {case.key}: " if case.key else f"error: {file}: "
    assert line.startswith(head), f"{line!r} does not start with {head!r}"
    assert case.rule in line, f"rule {case.rule!r} not in {line!r}"
    if case.value is not None:
        assert "but got" in line and case.value in line, f"value {case.value!r} not in {line!r}"
    if case.choices:
        assert "valid choices" in line or case.id in ("existing_experiment_directory", "unknown_metric_name",
                                                      "optuna_study_exists"), line
        for choice in case.choices:
            assert choice in line, f"choice {choice!r} not in {line!r}"


@pytest.fixture
def no_ray(monkeypatch, no_ray_running):
    """`ray.init` fails the test; RAY_ADDRESS unset (a sweep would start its own local Ray)."""
    import ray

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def refuse(*args, **kwargs):
        pytest.fail("Ray was started for bad input")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


def skip_if_not_applicable(case: Case) -> None:
    if case.id == "storage_path_read_only" and os.geteuid() == 0:
        pytest.skip("root writes anywhere: the read-only case needs an ordinary user (the file case runs)")
    if case.id == "workers_without_the_distributed_extra":
        from tuneloop.tune.distributed import state_api_installed

        if state_api_installed():
            pytest.skip("the distributed extra (ray[default]) is installed here")
    if case.id == "more_gpus_than_the_machine":
        import torch

        if torch.cuda.device_count() >= 64:  # pragma: no cover
            pytest.skip("this machine has 64 GPUs")


@pytest.mark.parametrize("command", ["validate", "sweep"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, command, tmp_path, monkeypatch, capsys, no_ray, request):
    if command not in case.commands:
        pytest.skip(f"`tuneloop {command}` does not check this (it is about running a sweep)")
    skip_if_not_applicable(case)
    if case.id == "mlflow_logger_without_mlflow":  # `import mlflow` fails, as where the extra is not installed
        monkeypatch.setitem(sys.modules, "mlflow", None)
    ctx = {"s3_endpoint": request.getfixturevalue("s3_endpoint")} if case.id.startswith("s3_bucket") else {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text(experiment_text(case, ctx))
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    try:
        status = cli.main([command, FILE, *case.args])
    finally:
        if (tmp_path / "readonly").exists():
            (tmp_path / "readonly").chmod(0o755)
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert out == ""
    check_message(err, case)
    assert snapshot(tmp_path) == before  # nothing written (an existing experiment: byte-identical)
    if ctx:
        import boto3

        buckets = boto3.client("s3", endpoint_url=ctx["s3_endpoint"]).list_buckets()["Buckets"]
        assert "no-such-bucket" not in {b["Name"] for b in buckets}


BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("case_id", ["data_mismatched_lengths", "more_cpus_than_the_machine"])
def test_bad_input_through_the_console_script(case_id, tmp_path):
    """The real `tuneloop` script: exit 2, one line on stderr, no Ray session directory, nothing written."""
    case = BY_ID[case_id]
    (tmp_path / FILE).write_text(experiment_text(case, {}))
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    ray_tmp = tmp_path.parent / f"{tmp_path.name}-ray"  # Ray's sessions would go here
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(Path(sys.executable).with_name("tuneloop")), "sweep", FILE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    check_message(proc.stderr, case)
    assert not ray_tmp.exists()
    assert snapshot(tmp_path) == before


def test_cluster_resources_are_checked_against_its_nodes(tmp_path, monkeypatch):
    """With an autoscaler (`ray up`), the node types it can add count; a node type whose resources
    are detected at start-up makes the check give up (it cannot tell beforehand)."""
    import ray

    from tuneloop.config import validate_experiment
    from tuneloop.config.errors import UserError, in_file
    from tuneloop.sweep.checks import check_cluster_resources

    def experiment(cpu, gpu):
        data = copy.deepcopy(BASE)
        data["sweep"]["resources_per_trial"] = {"cpu": cpu, "gpu": gpu}
        return validate_experiment(data, file=FILE)

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 0.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    monkeypatch.setattr("tuneloop.sweep.checks.AUTOSCALER_CONFIG", str(bootstrap))
    with pytest.raises(UserError) as refused, in_file(FILE):
        check_cluster_resources(experiment(1, 0))
    assert str(refused.value) == ("exp.yaml: sweep.resources_per_trial: one trial's cpu and gpu must fit on one node "
                                  "of the cluster (its nodes: cpu=0, gpu=0), but got cpu=1, gpu=0")
    bootstrap.write_text(yaml.safe_dump({"available_node_types": {
        "head": {"resources": {"CPU": 0}}, "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4}}}))
    check_cluster_resources(experiment(4, 1))  # the autoscaler adds a gpu node
    with pytest.raises(UserError, match=r"its nodes and node types: cpu=0, gpu=0; cpu=4, gpu=1\), but got cpu=1, gpu=2"):
        check_cluster_resources(experiment(1, 2))
    bootstrap.write_text(yaml.safe_dump({"available_node_types": {"head": {}, "gpu": {"max_workers": 4}}}))
    check_cluster_resources(experiment(1, 2))  # resources detected at start-up: cannot tell


def test_a_distributed_trials_workers_are_checked_against_the_clusters_nodes(monkeypatch):
    """Each worker fits on one node, and all of them on the nodes together, the Train run's driver
    (0.01 CPU) included; with an autoscaler only the first rule can be told beforehand."""
    import ray

    from tuneloop.config import validate_experiment
    from tuneloop.config.errors import UserError, in_file
    from tuneloop.sweep.checks import check_cluster_resources

    def experiment(workers, cpu, gpu=0):
        data = copy.deepcopy(BASE)
        data["sweep"]["resources_per_trial"] = {"workers": workers, "cpu": cpu, "gpu": gpu}
        return validate_experiment(data, file=FILE)

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 0.0}},
                                               {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
                                               {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}])
    monkeypatch.setattr("tuneloop.sweep.checks.AUTOSCALER_CONFIG", "/nonexistent/ray_bootstrap_config.yaml")
    check_cluster_resources(experiment(2, 0.5, 1))  # one worker per node
    check_cluster_resources(experiment(3, 0.5))  # 1 + 2 (the driver's share on the first node)
    with pytest.raises(UserError) as refused, in_file(FILE):
        check_cluster_resources(experiment(4, 0.5))
    assert str(refused.value) == ("exp.yaml: sweep.resources_per_trial: all of a trial's workers must fit on the "
                                  "cluster's nodes together, but 3 of 4 do (its nodes: cpu=0, gpu=0; cpu=1, gpu=1), "
                                  "but got workers=4, cpu=0.5, gpu=0")
    with pytest.raises(UserError, match=r"one worker's cpu and gpu must fit on one node of the cluster .*"
                                        r"but got workers=2, cpu=2, gpu=0"):
        check_cluster_resources(experiment(2, 2))


def test_concurrent_distributed_trials_are_capped_so_that_their_workers_fit():
    from tuneloop.config.schema import ResourcesConfig
    from tuneloop.tune.distributed import concurrent_trials, trial_demand, tune_resources

    need = ResourcesConfig(workers=2, cpu=0.5)
    assert trial_demand(need) == (1.01, 0) and tune_resources(need) == {"cpu": 0.01, "gpu": 0}
    assert concurrent_trials(need, 2, 0) == 1  # 2 x 1.01 > 2: the driver's share counts
    assert concurrent_trials(need, 4.04, 0) == 4
    assert concurrent_trials(ResourcesConfig(workers=4, cpu=1, gpu=1), 64, 8) == 2
    assert concurrent_trials(need, 0.5, 0) == 1  # never 0 (the check before refuses what cannot fit)
    assert tune_resources(ResourcesConfig(cpu=2, gpu=0.5)) == {"cpu": 2, "gpu": 0.5}  # one process: as before


@pytest.mark.ray
def test_a_cluster_that_cannot_hold_one_trial_is_refused_right_after_connecting(tmp_path, monkeypatch, capsys,
                                                                               no_ray_running):
    """`--address`: checked against the cluster's nodes once connected, before the Tuner runs."""
    from tl_ray import start_ray, stop_ray

    monkeypatch.chdir(tmp_path)
    experiment = copy.deepcopy(BASE)
    experiment["sweep"]["resources_per_trial"] = {"cpu": 3, "gpu": 0}
    (tmp_path / FILE).write_text(yaml.safe_dump(experiment))
    temp_dir = start_ray(num_cpus=2)  # the "cluster": one node of 2 CPUs, already connected
    capsys.readouterr()  # what Ray printed while starting
    try:
        status = cli.main(["sweep", FILE, "--address", "auto", "--quiet"])
    finally:
        stop_ray(temp_dir)
    err = capsys.readouterr().err
    assert status == 2
    check_message(err, Case("cluster", None, "sweep.resources_per_trial",
                            "one trial's cpu and gpu must fit on one node of the cluster (its nodes: cpu=2, gpu=0)",
                            "cpu=3, gpu=0"))
    # nothing written: the experiment directory's lock, taken before connecting, went with the refusal
    assert not (tmp_path / "results").exists()
    assert [p.name for p in tmp_path.rglob("*")] == [FILE]
