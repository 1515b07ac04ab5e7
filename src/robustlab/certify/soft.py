"""The soft smoothed classifier as an ``nn.Module``, so the attack template can attack it.

Salman et al. (2019), "Provably Robust Deep Learning via Adversarially Trained Smoothed
Classifiers" (NeurIPS), Sec. 3: the *soft* smoothed classifier of a base model ``f`` is

    G(x) = E_{delta ~ N(0, sigma^2 I)} [ softmax(f(x + delta)) ],

and SmoothAdv attacks it by maximising ``-log G(x')_y`` over the L2 ball, with the
expectation replaced by the mean over ``m`` noise draws ``delta_i = sigma * z_i``:

    -log( (1/m) * sum_i softmax(f(x' + sigma * z_i))_y ).

:class:`SoftSmoothed` returns ``log((1/m) * sum_i softmax(f(x + sigma * z_i)))``, i.e.
*log-probabilities*, not logits. Attacks whose loss is cross-entropy on logits then
compute exactly the SmoothAdv objective: ``log_softmax(log p) = log p`` when ``p`` sums to
one, so ``CE(log p, y) = -log p_y``. The argmax of the output is the soft smoothed
classifier's prediction.

With fixed noise (``noise=``) the module is a deterministic function of ``x``: the
standard PGD attack (``norm="l2"``) runs on it unchanged through ``Attack.generate`` or
``Attack.__call__``. Without fixed noise every forward pass draws fresh noise from
``generator`` (an expectation-over-transformation view of the smoothed classifier).

The noisy inputs ``x + sigma * z_i`` are not clipped to the input box (as in the
reference code of Cohen et al. and Salman et al.: the guarantee is about Gaussian noise,
which clipping would change).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustlab.errors import ConfigError, InvalidInputError
from robustlab.validation import check_float, check_int


def standard_noise(x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """``m`` standard-normal draws per row of ``x``: shape ``(m, N, *x.shape[1:])``.

    Drawn from ``generator`` on the generator's own device (so the numbers do not depend
    on where ``x`` lives when the generator is on the CPU), in ``x``'s dtype (float32 for
    half-precision inputs), then moved to ``x``'s device. The global RNG is never used.
    """
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    shape = (int(m), *x.shape)
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return z.to(x.device)


def noisy_copies(x: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The ``m * N`` inputs ``x + sigma * z_i`` for noise ``z`` of shape ``(m, N or 1, ...)``,
    flattened copy-major (rows ``0..N-1`` are copy 0, the next ``N`` copy 1, ...), not clipped."""
    z = noise.to(device=x.device, dtype=x.dtype)
    return (x.unsqueeze(0) + sigma * z).reshape(-1, *x.shape[1:])


def log_mean_softmax(logits: torch.Tensor, m: int) -> torch.Tensor:
    """``log((1/m) * sum_i softmax(logits_i))`` for copy-major logits ``(m * N, K)``:
    computed as ``logsumexp_i log_softmax(logits_i) - log m`` (no clamp needed)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    logp = logits.log_softmax(-1).reshape(m, -1, logits.shape[-1])
    return torch.logsumexp(logp, dim=0) - math.log(m)


class SoftSmoothed(nn.Module):
    """``x -> log((1/m) * sum_i softmax(model(x + sigma * z_i)))``: the log of the soft
    smoothed classifier of Salman et al. (2019), estimated with ``m`` noise draws.

    Parameters
    ----------
    model: the base classifier (outputs logits); registered as a submodule, so
        ``.eval()``/``.train()`` on the wrapper switch the model too.
    sigma: the noise level (standard deviation, in the model's input space), >= 0.
    m: the number of noise draws. With ``noise`` given it defaults to ``noise.shape[0]``
        (a different value is refused); else to 1.
    noise: fixed *standard-normal* draws ``z`` (scaled by ``sigma`` here), of shape
        ``(m, N, *features)`` -- one set per row of the batch it was drawn for (training:
        :meth:`Attack.generate` always passes the whole batch) -- or ``(m, 1, *features)``,
        one set shared by every row (needed by attacks that drop finished rows, such as
        :meth:`Attack.__call__`). With fixed noise the module is deterministic.
    generator: used when ``noise`` is None: every forward pass draws fresh noise from
        it (:func:`standard_noise`). One of ``noise`` and ``generator`` is required.

    The output is log-probabilities ``(N, K)`` (see the module docstring): cross-entropy
    on it is ``-log G(x)_y``, the SmoothAdv objective. ``num_classes``, ``input_shape``
    and ``input_bounds`` of ``model`` are exposed when it has them, so the attack
    template's checks see the base model's declarations.
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        m: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.sigma = check_float(sigma, "sigma", low=0.0)
        if noise is None:
            if generator is None:
                raise ConfigError(
                    "SoftSmoothed needs fixed noise (noise=) or a torch.Generator (generator=) to draw "
                    "fresh noise from; pass one (robustlab never draws from the global RNG)."
                )
            self.m = check_int(1 if m is None else m, "m", minimum=1)
        else:
            if not isinstance(noise, torch.Tensor) or noise.dim() < 3 or noise.shape[0] < 1:
                shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
                raise ConfigError(
                    f"noise must be a tensor of shape (m, N, *features) or (m, 1, *features), got {shape}; "
                    f"draw it with robustlab.certify.soft.standard_noise(x, m, generator)."
                )
            self.m = int(noise.shape[0])
            if m is not None and check_int(m, "m", minimum=1) != self.m:
                raise ConfigError(
                    f"m={m} but the fixed noise holds {self.m} draws (noise.shape[0]); leave m out "
                    f"or pass noise with m draws."
                )
            noise = noise.detach()
        self.noise = noise
        self.generator = generator
        for attr in ("num_classes", "input_shape", "input_bounds"):
            value: Any = getattr(model, attr, None)
            if value is not None:
                setattr(self, attr, value)

    def _noise_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise is None:
            assert self.generator is not None
            return standard_noise(x, self.m, self.generator)
        z = self.noise
        if tuple(z.shape[2:]) != tuple(x.shape[1:]) or z.shape[1] not in (1, len(x)):
            raise InvalidInputError(
                f"the fixed noise has shape {tuple(z.shape)} (m, rows, *features) but the inputs have "
                f"shape {tuple(x.shape)}: per-row noise only fits the batch it was drawn for. For "
                f"attacks that drop finished rows, use shared noise of shape (m, 1, *features) or "
                f"noise=None with a generator."
            )
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean softmax over the ``m`` noisy copies of each row of ``x``."""
        z = self._noise_for(x)
        logits = self.model(noisy_copies(x, z, self.sigma))
        return log_mean_softmax(logits, self.m)

    def extra_repr(self) -> str:
        fixed = "fixed" if self.noise is not None else "fresh"
        return f"sigma={self.sigma:g}, m={self.m}, noise={fixed}"


__all__ = ["SoftSmoothed", "log_mean_softmax", "noisy_copies", "standard_noise"]
