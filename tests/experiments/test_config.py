import pytest

from robustlab.errors import ConfigError
from robustlab.experiments import load_suite, make_config, packaged_config
from robustlab.experiments.config import Suite


def test_overrides_parse_yaml_values_and_eps_fractions():
    cfg = make_config(
        {"evaluate": {"attacks": [{"name": "pgd", "eps": [0.1]}]}},
        ["train.epochs=3", "noise.rate=0.4", "noise.kind=pairflip", "evaluate.attacks[0].eps=[8/255, 0.2]", "model.params.hidden=[32]"],
    )
    assert cfg.train.epochs == 3
    assert cfg.noise is not None and cfg.noise.rate == 0.4 and cfg.noise.kind == "pairflip"
    assert cfg.evaluate.attacks[0].eps == pytest.approx([8 / 255, 0.2])
    assert cfg.model.params == {"hidden": [32]}
    assert make_config({"noise": {"rate": 0.2}}, ["noise=null"]).noise is None


def test_unknown_keys_list_close_matches():
    with pytest.raises(ConfigError, match="'epochs'"):
        make_config({}, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="'evaluate'"):
        make_config({"evaluat": {}})
    with pytest.raises(ConfigError, match="rate"):
        make_config({}, ["noise.rate=1.5"])
    with pytest.raises(ConfigError, match="key=value"):
        make_config({}, ["train.epochs"])


def test_hash_is_stable_and_sensitive():
    a = make_config({}, ["train.epochs=3"])
    b = make_config({"train": {"epochs": 3}})
    c = make_config({}, ["train.epochs=4"])
    assert a.hash() == b.hash() != c.hash()
    assert len(a.hash()) == 64


def test_suite_expands_runs_and_grid():
    s = Suite.model_validate(
        {
            "suite": "t",
            "base": {"train": {"epochs": 2}},
            "runs": [{"name": "a"}, {"name": "b", "noise": {"rate": 0.2}}],
            "grid": {"seed": [0, 1]},
        }
    )
    cfgs = s.expand(["train.lr=0.01"])
    assert len(cfgs) == 4
    assert {c.name for c in cfgs} == {"a[seed=0]", "a[seed=1]", "b[seed=0]", "b[seed=1]"}
    assert all(c.train.lr == 0.01 and c.train.epochs == 2 for c in cfgs)
    assert len({c.hash() for c in cfgs}) == 4


def test_packaged_bench_suite_is_valid():
    s = load_suite(packaged_config("bench"))
    cfgs = s.expand()
    assert s.suite == "bench" and len(cfgs) >= 2
    rates = sorted({0.0 if c.noise is None else c.noise.rate for c in cfgs})
    assert rates == [0.0, 0.4]
    assert all(c.data.name == "digits" for c in cfgs)
    assert all(any(a.name == "pgd" and len(a.eps) >= 3 for a in c.evaluate.attacks) for c in cfgs)
    with pytest.raises(ConfigError, match="bench"):
        packaged_config("bensh")


def test_a_run_naming_another_model_does_not_inherit_the_base_models_params():
    from robustlab.experiments import Suite

    s = Suite.model_validate(
        {
            "base": {"model": {"name": "mlp", "params": {"hidden": [16]}}},
            "runs": [{"name": "a"}, {"name": "b", "model": {"name": "mnist_net"}},
                     {"name": "c", "model": {"params": {"hidden": [8]}}}],
        }
    )
    a, b, c = s.expand()
    assert a.model.params == {"hidden": [16]}
    assert b.model.name == "mnist_net" and b.model.params == {}
    assert c.model.name == "mlp" and c.model.params == {"hidden": [8]}


def test_loss_presets_fill_params_and_explicit_params_win():
    from robustlab.errors import UnknownNameError

    cfg = make_config({"train": {"loss": {"name": "sce", "preset": "cifar10"}}})
    assert cfg.train.loss.resolved_params() == {"alpha": 0.1, "beta": 1.0}
    cfg = make_config({"train": {"loss": {"name": "sce", "preset": "cifar100", "params": {"beta": 0.5}}}})
    assert cfg.train.loss.resolved_params() == {"alpha": 6.0, "beta": 0.5}
    with pytest.raises(UnknownNameError, match="cifar10"):
        make_config({"train": {"loss": {"name": "sce", "preset": "cifar11"}}}).train.loss.resolved_params()
