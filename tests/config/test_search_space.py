"""Search space → Optuna distributions and Tune domains; trial params onto the run section."""

import optuna

from tuneloop.config import load_experiment
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
