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
    # the override changes every run, so every name says so
    assert {c.name for c in cfgs} == {f"{r}[seed={k}] [lr=0.01]" for r in "ab" for k in (0, 1)}
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


def test_train_config_is_derived_from_the_trainer_signature():
    """Every keyword setting of Trainer is a train.* key with the Trainer's default, and
    the train section has nothing else but the objective and loss by name."""
    import inspect

    from robustlab.experiments.config import TrainConfig
    from robustlab.train import Trainer

    runtime = {"self", "model", "objective", "seed", "checkpoint_dir", "progress", "callbacks"}
    params = {n: p for n, p in inspect.signature(Trainer.__init__).parameters.items() if n not in runtime}
    fields = TrainConfig.model_fields
    assert set(fields) == set(params) | {"objective", "objective_params", "objective_preset", "loss"}
    default_cfg = make_config({}).train
    for name, p in params.items():
        want = list(p.default) if isinstance(p.default, tuple) else p.default
        assert getattr(default_cfg, name) == want, name
    assert default_cfg.trainer_kwargs() == {n: getattr(default_cfg, n) for n in params}


@pytest.mark.parametrize("bad", ["train.epochs=2.5", "train.epochs=true", "train.batch_size=0.5"])
def test_integer_settings_refuse_fractions_and_booleans(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        make_config({}, [bad])


def test_yaml_reads_exponents_without_a_dot_as_numbers(tmp_path):
    from robustlab.experiments.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("train:\n  loss: {name: gce, params: {q: 7e-1}}\n  lr: 1e-2\n  weight_decay: 5E-4\n")
    cfg = load_config(p, ["train.momentum=9e-1"])
    assert cfg.train.loss.params["q"] == 0.7 and isinstance(cfg.train.loss.params["q"], float)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.momentum) == (0.01, 5e-4, 0.9)


def test_label_noise_needs_a_rate():
    with pytest.raises(ConfigError, match="noise.rate is required"):
        make_config({"noise": {"kind": "symmetric"}})
    assert make_config({"noise": {"kind": "symmetric", "rate": 0.0}}).noise.rate == 0.0
    assert make_config({"noise": {"kind": "matrix", "options": {"T": [[1, 0], [0, 1]]}}}).noise.rate is None


def test_run_names_carry_the_overrides_that_change_them():
    s = load_suite(packaged_config("bench"))
    names = [c.label() for c in s.expand(["train.epochs=2", "train.batch_size=64", "seed=0"])]
    assert names[0] == "ce/clean [epochs=2]"  # batch_size=64 and seed=0 are the suite's own values
    assert len(set(names)) == len(names)
    assert [c.label() for c in s.expand()][0] == "ce/clean"
