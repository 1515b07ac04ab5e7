import pytest

from robustlab.errors import ConfigError, UnknownNameError
from robustlab.registry import Registry


def make() -> Registry:
    r: Registry = Registry("widget")

    @r.register("wide_resnet", aliases=("wrn",))
    def wide(depth: int = 28, widen_factor: int = 10):
        return ("wide", depth, widen_factor)

    @r.register("preact_resnet18")
    class Pre:
        def __init__(self, num_classes: int = 10):
            self.num_classes = num_classes

    @r.register("mlp")
    def mlp(**kwargs):
        return kwargs

    return r


def test_create_passes_params_and_normalises_names():
    r = make()
    assert r.create("wide-resnet", depth=16) == ("wide", 16, 10)
    assert r.create("WRN", widen_factor=2) == ("wide", 28, 2)
    assert r.create("preact_resnet18", num_classes=3).num_classes == 3
    assert r.canonical("wrn") == "wide_resnet"


def test_available_sorted_and_filtered():
    r = make()
    assert r.available() == ["mlp", "preact_resnet18", "wide_resnet"]
    assert r.available("*resnet*") == ["preact_resnet18", "wide_resnet"]
    assert "wrn" in r and "nope" not in r and len(r) == 3


def test_unknown_name_lists_close_matches():
    r = make()
    with pytest.raises(UnknownNameError) as e:
        r.create("wide_resnt")
    msg = str(e.value)
    assert "'wide_resnet'" in msg.split("Available")[0] and "Available: mlp, preact_resnet18, wide_resnet" in msg


def test_unknown_parameter_lists_close_parameter():
    r = make()
    with pytest.raises(ConfigError, match="'widen_factor'"):
        r.create("wide_resnet", widen_factr=3)
    with pytest.raises(ConfigError, match="num_classes"):
        r.create("preact_resnet18", num_class=3)
    assert r.create("mlp", anything=1) == {"anything": 1}  # **kwargs accept everything


def test_double_registration_refused():
    r = make()
    with pytest.raises(ValueError):
        r.add("MLP", lambda: None)
