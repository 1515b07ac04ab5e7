"""The transfer matrix: crafted once per source, scored on every target, with the
white-box diagonal and the audit's black-box-stronger flag."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from robustlab.attacks import ThreatModel, create
from robustlab.errors import ConfigError, ShapeMismatchError, UnknownNameError
from robustlab.evaluate.transfer import TransferMatrix, transfer_matrix
from robustlab.report.transfer import transfer_html, transfer_text
from robustlab.seeding import derive_seed

T = ThreatModel("linf", 0.15)


def cnn(seed: int = 0, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, k))
    net.num_classes = k  # type: ignore[assignment]
    net.input_shape = (1, 8, 8)  # type: ignore[assignment]
    return net


class Masked(nn.Module):
    """The same function as ``net`` with an all-zero input gradient (gradient masking)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach() + 0 * x)


def data(net: nn.Module, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:4] = (y[:4] + 1) % 4  # four clean-misclassified points
    return x, y


@pytest.mark.parametrize("attack,params", [("mi-fgsm", {}), ("mi-fgsm", {"diversity_prob": 0.5}),
                                           ("cwa", {"steps": 5})])
def test_on_identical_copies_transfer_success_equals_white_box_success(attack, params):
    a = cnn()
    b = copy.deepcopy(a)
    x, y = data(a)
    m = transfer_matrix({"a": a, "b": b}, {"a": a, "b": b}, x, y, attack, T, **params)
    wb = m.white_box["a"]
    assert 0 < wb < 1
    assert m.success["a"]["b"] == m.success["b"]["a"] == m.success["a"]["a"] == m.white_box["b"] == wb
    assert torch.equal(m.examples["a"], m.examples["b"])
    assert m.clean_correct == {"a": 44, "b": 44} and m.flags == {"a": [], "b": []}


def test_the_diagonal_is_the_attack_as_an_evaluation_would_run_it():
    a, c = cnn(0), cnn(7)
    x, y = data(a)
    m = transfer_matrix({"a": a}, {"a": a, "c": c}, x, y, "mi-fgsm", T, steps=5)
    for name, net in (("a", a), ("c", c)):  # c is no source: crafted on itself for the diagonal
        res = create("mi-fgsm", steps=5)(net, x, y, T)
        assert m.clean_correct[name] == int(res.clean_correct.sum())
        assert m.white_box_broken[name] == int(res.success[res.clean_correct].sum())
    # a cell counts clean-correct points of the target that the examples break, nothing else
    mask = m.broken_mask["a"]["c"]
    with torch.no_grad():
        clean_ok = c(x).argmax(1) == y
        adv_wrong = c(m.examples["a"]).argmax(1) != y
    assert torch.equal(mask, clean_ok & adv_wrong)
    assert m.success["a"]["c"] == int(mask.sum()) / int(clean_ok.sum())
    # every crafted example lies in the ball and the box
    assert float(T.norm_of(m.examples["a"] - x).max()) <= T.eps + 1e-6
    assert 0 <= float(m.examples["a"].min()) and float(m.examples["a"].max()) <= 1


def test_transfer_beating_the_white_box_attack_flags_gradient_masking():
    net = cnn()
    masked = Masked(copy.deepcopy(net))
    x, y = data(net)
    m = transfer_matrix({"net": net, "net+masked": [net, masked]}, {"net": net, "masked": masked}, x, y,
                        "mi-fgsm", T)
    assert m.white_box["masked"] == 0.0  # a zero gradient moves no point
    assert m.success["net"]["masked"] == m.white_box["net"] > 0.3  # the same function: same points break
    assert m.flags["net"] == []  # "net+masked" holds net: white-box access, not compared
    (flag,) = m.flags["masked"]
    assert flag.code == "black-box-stronger" and flag.value == pytest.approx(m.success["net"]["masked"])
    assert "crafted on net without access to masked" in flag.message


def test_an_ensemble_source_crafts_on_all_its_members():
    a, b, c = cnn(0), cnn(3), cnn(7)
    x, y = data(a)
    m = transfer_matrix({"a+b": [a, b], "a": a}, {"c": c}, x, y, "cwa", T, steps=4)
    g = torch.Generator().manual_seed(derive_seed("transfer", 0))
    ens = create("cwa", surrogates=[a, b], steps=4).generate(a, x, y, T, generator=g)
    assert torch.equal(m.examples["a+b"], ens)
    assert not torch.equal(m.examples["a+b"], m.examples["a"])


def test_the_matrix_round_trips_and_renders():
    a, c = cnn(0), cnn(7)
    x, y = data(a)
    m = transfer_matrix({"a<b>": a}, {"a<b>": a, "c": c}, x, y, "mi-fgsm", T, steps=3)
    d = json.loads(json.dumps(m.to_dict()))
    back = TransferMatrix.from_dict(d)
    assert back.success == m.success and back.white_box == m.white_box and back.params == {"steps": 3}
    text = transfer_text(m)
    assert f"[{100 * m.success['a<b>']['a<b>']:.1f}]" in text and f"{100 * m.success['a<b>']['c']:.1f}" in text
    assert "white-box" in text and "clean-correct" in text and "flags: none" in text
    html = transfer_html(d)
    assert "a&lt;b&gt;" in html and "<b>" not in html


def test_bad_input_is_refused_with_typed_errors():
    a = cnn()
    x, y = data(a)
    with pytest.raises(ConfigError, match="non-empty dict"):
        transfer_matrix({}, {"a": a}, x, y)
    with pytest.raises(ConfigError, match="non-empty dict"):
        transfer_matrix({"a": a}, [a], x, y)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one surrogate"):
        transfer_matrix({"e": []}, {"a": a}, x, y)
    with pytest.raises(ShapeMismatchError, match="model 'five' returns 5 classes but target 'a' has 4"):
        transfer_matrix({"five": cnn(k=5)}, {"a": a}, x, y)
    with pytest.raises(ShapeMismatchError, match="model 'a' returns 4 classes but target 'ten' has 10"):
        transfer_matrix({"a": a}, {"ten": cnn(k=10)}, x, y)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(100, 4))
    with pytest.raises(ShapeMismatchError, match=r"model 'e\[1\]' cannot take inputs"):
        transfer_matrix({"e": [a, flat]}, {"a": a}, x, y)
    with pytest.raises(ConfigError, match="do not pass surrogates"):
        transfer_matrix({"a": a}, {"a": a}, x, y, surrogates=[a])
    with pytest.raises(UnknownNameError):
        transfer_matrix({"a": a}, {"a": a}, x, y, "mi-fgs")
