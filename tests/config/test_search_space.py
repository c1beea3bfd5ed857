"""Search space → Optuna distributions and Tune domains; trial params onto the run section."""

import re

import optuna
import pytest

from tuneloop.config import ExperimentConfig, load_experiment
from tuneloop.config.search_space import apply_params, to_optuna
from tuneloop.tune.search_space import to_tune


def space(tmp_path, text):
    path = tmp_path / "e.yaml"
    path.write_text(f"""
run: {{name: x, data: a.b, net: a.b, optimizer: a.b, epochs: 2, batch_size: 8,
      net_config: {{hidden: 8}}, optimizer_config: {{lr: 0.1}}}}
sweep:
  search_space:
{text}
""")
    return load_experiment(path).sweep.search_space


def test_distributions(tmp_path):
    s = space(tmp_path, """
    optimizer_config.lr: {type: float, low: 1e-4, high: 1e-1, log: true}
    optimizer_config.momentum: {type: float, low: 0.5, high: 0.9, step: 0.1}
    net_config.hidden: {type: int, low: 8, high: 64, step: 8}
    net_config.layers: {type: int, low: 1, high: 8, log: true}
    batch_size: {type: categorical, choices: [16, 32]}
""")
    d = to_optuna(s)
    assert d["optimizer_config.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert d["optimizer_config.momentum"] == optuna.distributions.FloatDistribution(0.5, 0.9, step=0.1)
    assert d["net_config.hidden"] == optuna.distributions.IntDistribution(8, 64, step=8)
    assert d["net_config.layers"] == optuna.distributions.IntDistribution(1, 8, log=True)
    assert d["batch_size"] == optuna.distributions.CategoricalDistribution([16, 32])
    domains = to_tune(s)
    assert set(domains) == set(d)
    for _ in range(20):
        assert 1e-4 <= domains["optimizer_config.lr"].sample() <= 1e-1
        assert domains["net_config.hidden"].sample() % 8 == 0
        assert domains["batch_size"].sample() in (16, 32)


def test_apply_params_indexes_the_callbacks_list():
    run = {"callbacks": [{"class": "a.B", "x": 1}, {"class": "c.D"}]}
    out = apply_params(run, {"callbacks.1.max_norm": 2.5, "callbacks.0.x": 3})
    assert out["callbacks"] == [{"class": "a.B", "x": 3}, {"class": "c.D", "max_norm": 2.5}]
    assert run["callbacks"][1] == {"class": "c.D"}


def test_apply_params_sets_dotted_keys_on_a_copy():
    run = {"net_config": {"hidden": 8}, "batch_size": 4}
    out = apply_params(run, {"net_config.hidden": 32, "batch_size": 16, "optimizer_config.lr": 0.5})
    assert out == {"net_config": {"hidden": 32}, "batch_size": 16, "optimizer_config": {"lr": 0.5}}
    assert run == {"net_config": {"hidden": 8}, "batch_size": 4}


CONDITIONAL = {
    "optimizer": {"type": "categorical", "choices": ["torch.optim.AdamW", "torch.optim.SGD"],
                  "subspaces": {"torch.optim.SGD": {"optimizer_config.momentum": {"type": "float", "low": 0.5,
                                                                                  "high": 0.99}},
                                "torch.optim.AdamW": {"optimizer_config.weight_decay": {
                                    "type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}},
    "optimizer_config.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
}


def conditional_experiment(**sweep):
    return ExperimentConfig.model_validate({
        "run": {"name": "c", "data": "tl_testing.blobs", "net": "tl_testing.Probe", "optimizer": "torch.optim.AdamW",
                "epochs": 2, "batch_size": 8},
        "sweep": {"search_space": CONDITIONAL, **sweep}})


def test_a_conditional_space_samples_each_sub_space_only_for_its_choice():
    import optuna

    from tuneloop.config.search_space import DefineByRun

    cfg = conditional_experiment()
    assert set(cfg.sweep.params()) == {"optimizer", "optimizer_config.momentum", "optimizer_config.weight_decay",
                                       "optimizer_config.lr"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: DefineByRun(cfg.sweep.search_space)(trial) or 0.0, n_trials=30)
    seen = set()
    for trial in study.trials:
        chosen = trial.params["optimizer"]
        seen.add(chosen)
        own = "optimizer_config.momentum" if chosen == "torch.optim.SGD" else "optimizer_config.weight_decay"
        assert set(trial.params) == {"optimizer", "optimizer_config.lr", own}
    assert seen == {"torch.optim.AdamW", "torch.optim.SGD"}


def test_every_choice_is_checked_against_its_own_keyword_arguments():
    """SGD's momentum in run is valid for SGD but not for AdamW: validate names the branch."""
    from tuneloop.config import check_imports
    from tuneloop.config.errors import UserError

    cfg = conditional_experiment()
    check_imports(cfg)
    cfg.run.optimizer_config = {"momentum": 0.9}
    with pytest.raises(UserError, match=r"run.optimizer_config.momentum: unknown keyword argument of "
                                        r"torch.optim.AdamW \(when optimizer is torch.optim.AdamW\)"):
        check_imports(cfg)


def test_points_to_evaluate_are_checked_against_the_space():
    conditional_experiment(points_to_evaluate=[{"optimizer": "torch.optim.SGD", "optimizer_config.momentum": 0.9}])
    from tuneloop.config.loading import validate_experiment
    from tuneloop.config.errors import UserError

    raw = conditional_experiment().model_dump(mode="json", by_alias=True)
    for point, message in (
            ({"optimizer": "torch.optim.Adam"}, "sweep.points_to_evaluate.0.optimizer: must be one of the choices"),
            ({"optimizer_config.lr": 5.0}, "sweep.points_to_evaluate.0.optimizer_config.lr: must be within"),
            ({"optimizer_config.eps": 1e-8}, "sweep.points_to_evaluate.0.optimizer_config.eps: must be a key of "
                                             "sweep.search_space"),
            ({"optimizer": "torch.optim.AdamW", "optimizer_config.momentum": 0.9},
             "sweep.points_to_evaluate.0.optimizer_config.momentum: is searched only when optimizer is "
             "torch.optim.SGD")):
        raw["sweep"]["points_to_evaluate"] = [point]
        with pytest.raises(UserError, match=re.escape(message)):
            validate_experiment(raw, file="x.yaml")
