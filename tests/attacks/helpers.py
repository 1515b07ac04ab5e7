"""Shared test helpers: small models with known answers and the per-attack cheap params."""

from __future__ import annotations

import math

import torch
from torch import nn

# small budgets so that every registered attack runs in well under a second; attacks
# registered later (not in the table) run with their defaults
CHEAP: dict[str, dict] = {
    "pgd": {"steps": 5},
    "fgsm": {},
    "apgd": {"steps": 5},
    "apgd-ce": {"steps": 5},
    "apgd-dlr": {"steps": 5},
    "apgd-t": {"steps": 5, "targets": 2},
    "pma": {"steps": 5},
    "eot": {"attack": "apgd-ce", "samples": 2, "params": {"steps": 3}},
    "fab": {"n_iter": 5},
    "fab-t": {"n_iter": 5, "n_target_classes": 2},
    "square": {"n_queries": 20},
    "cw-l2": {"steps": 10, "binary_search_steps": 2},
    "standard": {
        "members": [
            ("apgd-ce", {"steps": 5}),
            ("apgd-t", {"steps": 5, "targets": 2}),
            ("fab-t", {"n_iter": 5, "n_target_classes": 2}),
            ("square", {"n_queries": 20}),
        ]
    },
    "fast": {"members": [("apgd-ce", {"steps": 5}), ("pma", {"steps": 5, "targets": 2})]},
    "rand": {"members": [("eot", {"attack": "apgd-ce", "samples": 2, "params": {"steps": 3}})]},
    "ensemble": {"members": [("fgsm", {}), ("apgd-ce", {"steps": 5})]},
}


def cheap(name: str) -> dict:
    """The cheap parameters of ``name`` (its defaults when it is not in the table)."""
    return dict(CHEAP.get(name, {}))


def linear_model(d: int = 12, k: int = 4, seed: int = 0, scale: float = 3.0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * scale / math.sqrt(d))
        lin.bias.copy_(torch.randn(k, generator=g) * 0.1)
    return lin


def exact_linf_robust(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """A point is robust iff for every j != y the minimum over the box-clipped L-inf ball
    of (w_y - w_j).x + (b_y - b_j) is positive; the minimiser is coordinate-wise."""
    W, b = lin.weight.detach(), lin.bias.detach()
    x = x.reshape(len(x), -1)
    robust = lin(x).argmax(1) == y
    for j in range(W.shape[0]):
        a = W[y] - W[j]
        x_star = torch.where(a > 0, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
        margin = (a * x_star).sum(1) + b[y] - b[j]
        robust &= (margin > 0) | (y == j)
    return robust


def exact_l1_robust(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """L1 ball ∩ [0,1]^d: minimising a.delta is a fractional knapsack: spend the budget on
    the coordinates with the largest |a_i| first, each up to its room in the box."""
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    xd = x.reshape(len(x), -1).double()
    robust = lin(x.reshape(len(x), -1)).argmax(1) == y
    for j in range(W.shape[0]):
        a = W[y] - W[j]
        room = torch.where(a > 0, xd, 1 - xd)  # how far each coordinate can move to lower a.x
        order = a.abs().argsort(1, descending=True)
        a_s, room_s = a.abs().gather(1, order), room.gather(1, order)
        spent_before = torch.cumsum(room_s, 1) - room_s
        move = (eps - spent_before).clamp(min=0).minimum(room_s)
        margin = (a * xd).sum(1) - (a_s * move).sum(1) + b[y] - b[j]
        robust &= (margin > 0) | (y == j)
    return robust


class Flat(nn.Module):
    """A linear model on image-shaped inputs (N, 1, 4, 4) with attributes models carry."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin
        self.num_classes = lin.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.reshape(len(x), -1))


def problem(n: int = 300, d: int = 12, k: int = 4, seed: int = 0, wrong: int = 20):
    """A multi-class linear model, points in [0,1]^d and labels (the first ``wrong`` of
    which are deliberately wrong, so some points are misclassified when clean)."""
    lin = linear_model(d=d, k=k, seed=seed)
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed + 1))
    y = lin(x).argmax(1).detach()
    y[:wrong] = (y[:wrong] + 1) % k
    return lin, x, y


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
