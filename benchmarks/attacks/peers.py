"""Peer-library side of the attack benchmark: runs in the peers' own virtual environment.

Started by ``benchmarks/attacks/run.py`` as ``PEER_PYTHON peers.py JOB.json OUT.json``.
The job names a model (robustlab's zoo config, rebuilt with ``robustlab.models.create``
from the repository's ``src``, and a plain ``state_dict`` read with
``torch.load(weights_only=True)``: only the model zoo is imported, so both sides evaluate
the same architecture with the same weights) and ``.npy`` inputs/labels, and what to run:

- ``pgd``: torchattacks ``PGD``, foolbox ``LinfPGD`` and ART ``ProjectedGradientDescent``
  with the same steps, absolute step size and uniform random start; wall time (median
  of ``repeats``) and robust accuracy (prediction on the returned points);
- ``standard``: pyautoattack's ``AutoAttack(version="standard")``: robust accuracy after
  each attack, samples passed forward/backward through the model (counted by a wrapper
  around the model's forward; a backward is counted each time a gradient reaches the
  output, i.e. once per vector-Jacobian product), and wall time.

Every library gets the model in eval mode with frozen parameters (their fastest use:
no parameter gradients), inputs in one batch, and ``torch.set_num_threads(threads)``.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from robustlab.models import create as create_model  # noqa: E402  (the zoo only: plain torch modules)


def load_shared_model(spec: dict) -> nn.Module:
    """Rebuild a model written by ``run.share_model``: zoo config + plain state_dict.
    Returned in eval mode with frozen parameters."""
    cfg = spec["config"]
    model = create_model(cfg["name"], **cfg["params"])
    model.load_state_dict(torch.load(spec["state_dict"], weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Counted(nn.Module):
    """Counts samples passed forward, and backward through the output (per VJP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = len(x)
        self.forwards += n
        if out.requires_grad:
            out.register_hook(lambda g: self._backward(n))
        return out

    def _backward(self, n: int) -> None:
        self.backwards += n


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def run_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict:
    eps, steps, alpha, repeats = cfg["eps"], cfg["steps"], cfg["step_size"], cfg["repeats"]
    n = len(x)
    out: dict[str, dict] = {}

    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def ta():
        torch.manual_seed(cfg["seed"])
        return atk(x, y)

    times, adv = _timed(ta, repeats)
    out["torchattacks PGD"] = {"times": times, "robust_accuracy": _accuracy(model, adv, y)}

    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    fatk = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)

    def fo():
        torch.manual_seed(cfg["seed"])
        _, clipped, _ = fatk(fmodel, x, y, epsilons=eps)
        return clipped

    times, adv = _timed(fo, repeats)
    out["foolbox LinfPGD"] = {"times": times, "robust_accuracy": _accuracy(model, adv, y)}

    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=cfg["num_classes"],
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    aatk = ProjectedGradientDescent(
        clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps, num_random_init=1,
        batch_size=n, verbose=False,
    )
    xn, yn = x.numpy(), y.numpy()

    def ar():
        np.random.seed(cfg["seed"])
        return torch.from_numpy(aatk.generate(xn, yn))

    times, adv = _timed(ar, repeats)
    out["ART ProjectedGradientDescent"] = {"times": times, "robust_accuracy": _accuracy(model, adv, y)}
    for rec in out.values():
        rec["seconds"] = statistics.median(rec["times"])
    return out


def run_standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict:
    from pyautoattack import AutoAttack

    counted = Counted(model)
    logger = logging.getLogger("auto-attack")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    aa = AutoAttack(counted, norm="Linf", eps=cfg["eps"], version="standard", seed=cfg["seed"])
    aa.logger = logger
    t0 = time.perf_counter()
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    seconds = time.perf_counter() - t0
    stages, stage_seconds, before = {}, {}, 0.0
    for line in records:  # "robust accuracy after APGD-CE: 12.30% (total time 4.5 s)"
        if line.startswith("robust accuracy after "):
            name, rest = line[len("robust accuracy after "):].split(":", 1)
            label = name.strip().lower()
            stages[label] = float(rest.strip().split("%")[0]) / 100
            if "(total time " in rest:  # cumulative since the start of the evaluation, 0.1 s resolution
                total = float(rest.split("(total time ")[1].split()[0])
                stage_seconds[label], before = total - before, total
    return {
        "robust_accuracy": _accuracy(model, x_adv, y),
        "stage_robust_accuracy": stages,
        "stage_seconds": stage_seconds,
        "forwards": counted.forwards,
        "backwards": counted.backwards,
        "seconds": seconds,
        "max_linf": float((x_adv - x).abs().reshape(len(x), -1).amax(1).max()),
    }


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(int(job["threads"]))
    model = load_shared_model(job["model"])
    x = torch.from_numpy(np.load(job["x"]))
    y = torch.from_numpy(np.load(job["y"])).long()
    import art
    import foolbox
    import pyautoattack
    import torchattacks

    result: dict = {
        "versions": {
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "foolbox": foolbox.__version__,
            "adversarial-robustness-toolbox": art.__version__,
            "pyautoattack": pyautoattack.__version__,
        }
    }
    if "pgd" in job:
        n = job["pgd"]["n"]
        result["pgd"] = run_pgd(model, x[:n], y[:n], {**job["pgd"], "num_classes": job["num_classes"]})
    if "standard" in job:
        n = job["standard"]["n"]
        result["standard"] = run_standard(model, x[:n], y[:n], job["standard"])
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
