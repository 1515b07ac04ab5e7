"""Model -> bound graph: trace a model with ``torch.fx`` and turn every node that depends
on the input into one of a few *bound operations*.

A bound operation knows two things about the function it stands for:

- ``ibp(intervals) -> (lower, upper)``: the interval image of a box (Gowal et al. 2018);
- ``backward(lam, pre) -> (lams, bias)``: given a linear lower bound ``lam . out`` of
  the objective in terms of the op's output, the coefficients on its inputs and the
  constant term, i.e. one step of CROWN's backward substitution (Zhang et al. 2018).

Constants (parameters, buffers, plain tensor attributes, Python numbers, shapes) are
folded at build time: ``(x - self.mean) / self.std`` becomes one elementwise affine op
whatever ``mean`` and ``std`` are held as. The graph is built on a two-sample copy of the
first input (so a reshape that merged the batch into the features is caught) and keeps
per-sample shapes only. :func:`trace_graph` also returns the :class:`Trace`, from which
:func:`rebuild_graph` rebuilds the graph without tracing or running the model: every
rebuild reads the model's *current* weights (everything that does not depend on the
input is recomputed), and every op reads its tensors as differentiable views of the
model's parameters (bounds can be trained through).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustlab.errors import UnsupportedLayerError
from robustlab.models.layers import Normalize

Interval = tuple[torch.Tensor, torch.Tensor]

#: on CPU, the adjoint of a convolution with at most this many input channels (and one
#: group) is computed as columns + ``F.fold`` instead of a transposed convolution
FOLD_MAX_IN_CHANNELS = 4

#: what the bound graph understands (shown in every UnsupportedLayerError)
SUPPORTED = (
    "Linear / F.linear",
    "Conv2d / F.conv2d (any stride, padding, dilation, groups; zero padding)",
    "ReLU / F.relu / torch.relu / .relu()",
    "LeakyReLU (slope >= 0)",
    "Sigmoid, Tanh, ELU (alpha >= 0), Softplus, Hardtanh, ReLU6 (monotone; loose in CROWN)",
    "Flatten / Unflatten / view / reshape / flatten / squeeze / unsqueeze",
    "AvgPool2d / AdaptiveAvgPool2d / F.avg_pool2d / F.adaptive_avg_pool2d",
    "BatchNorm1d / BatchNorm2d (running statistics)",
    "robustlab Normalize",
    "+ - * / with constants (buffers, parameters, plain tensor attributes, numbers)",
    "sums and differences of two traced tensors (residual connections)",
    "Identity / Dropout (identity in eval mode) / contiguous / clone",
    "MaxPool2d (method='ibp' only)",
)


def supported_text() -> str:
    return "; ".join(SUPPORTED)


def unsupported(what: str, why: str = "") -> UnsupportedLayerError:
    reason = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"bound propagation does not support {what}{reason}. Supported: {supported_text()}."
    )


# -- bound operations -----------------------------------------------------------------------
@dataclass(eq=False)
class Op:
    """One node of the bound graph: ``inputs`` are op indices, ``shape`` is per sample."""

    name: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def ibp(self, ins: list[Interval]) -> Interval:
        raise NotImplementedError

    def backward(
        self, lam: torch.Tensor, pre: list[Interval | None], alpha: torch.Tensor | None
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        """``lam`` has shape ``(B, S, *shape)``; returns the coefficients on each input
        (``None``: nothing flows there) and the constant term ``(B, S)`` (or ``None``)."""
        raise NotImplementedError


def _center_radius(iv: Interval) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = iv
    return (hi + lo) / 2, (hi - lo) / 2


def _sum_spec(t: torch.Tensor) -> torch.Tensor:
    """Sum a ``(B, S, ...)`` tensor over everything but ``(B, S)``."""
    return t.flatten(2).sum(-1) if t.dim() > 2 else t


@dataclass(eq=False)
class InputOp(Op):
    def ibp(self, ins: list[Interval]) -> Interval:  # pragma: no cover - never called
        raise RuntimeError("the input has no IBP rule")


@dataclass(eq=False)
class LinearOp(Op):
    """``y = x W^T + b`` on the last dimension."""

    weight: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    bias: torch.Tensor | None = None

    def ibp(self, ins: list[Interval]) -> Interval:
        c, r = _center_radius(ins[0])
        c = F.linear(c, self.weight, self.bias)
        r = F.linear(r, self.weight.abs())
        return c - r, c + r

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        bias = None if self.bias is None else lam @ self.bias
        return [lam @ self.weight], bias


@dataclass(eq=False)
class ConvOp(Op):
    """2-D convolution with zero padding. The adjoint (CROWN's backward step) is the
    transposed convolution with the same weight and ``output_padding`` chosen so that
    the result has the input's spatial size (the rows lost to the forward floor)."""

    weight: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    bias: torch.Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_shape: tuple[int, ...] = ()

    def _conv(self, t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(t, w, b, self.stride, self.padding, self.dilation, self.groups)

    def ibp(self, ins: list[Interval]) -> Interval:
        c, r = _center_radius(ins[0])
        c = self._conv(c, self.weight, self.bias)
        r = self._conv(r, self.weight.abs(), None)
        return c - r, c + r

    def output_padding(self) -> tuple[int, int]:
        kh, kw = self.weight.shape[-2:]
        out = []
        for i, k in enumerate((kh, kw)):
            size_out = self.shape[1 + i]
            size_in = self.in_shape[1 + i]
            back = (size_out - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k - 1) + 1
            out.append(size_in - back)
        return out[0], out[1]

    def adjoint(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam`` of shape ``(N, *shape)`` -> ``(N, *in_shape)``: the transpose of the
        convolution's linear part applied to ``lam``.

        On CPU (measured, 1 thread, ``N = 576``): a convolution with few input channels
        (``groups == 1``, at most :data:`FOLD_MAX_IN_CHANNELS`: a network's first layer)
        takes the columns ``W^T lam`` with one matrix product and sums them into the image
        with ``F.fold`` (col2im), 5x faster than oneDNN's transposed convolution there;
        wider layers use the transposed convolution on channels-last data (1.3x faster than
        contiguous, result made contiguous; a regular convolution over the stride's phases and
        ``torch.nn.grad.conv2d_input`` were slower). Other devices: the transposed
        convolution."""
        if lam.device.type == "cpu":
            cin = self.in_shape[0]
            if self.groups == 1 and cin <= FOLD_MAX_IN_CHANNELS:
                kh, kw = self.weight.shape[-2:]
                n = lam.shape[0]
                cols = torch.matmul(self.weight.reshape(self.weight.shape[0], -1).t(), lam.reshape(n, self.shape[0], -1))
                return F.fold(cols, self.in_shape[1:], (kh, kw), self.dilation, self.padding, self.stride)
            lam = lam.contiguous(memory_format=torch.channels_last)
            # back to contiguous: the elementwise steps that follow broadcast (B, 1, ...)
            # relaxations over it and are several times slower on channels-last strides
            return F.conv_transpose2d(
                lam, self.weight, None, self.stride, self.padding, self.output_padding(), self.groups, self.dilation
            ).contiguous()
        return F.conv_transpose2d(
            lam, self.weight, None, self.stride, self.padding, self.output_padding(), self.groups, self.dilation
        )

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        b, s = lam.shape[:2]
        lam_in = self.adjoint(lam.reshape(b * s, *self.shape)).reshape(b, s, *self.in_shape)
        bias = None if self.bias is None else lam.sum((-2, -1)) @ self.bias
        return [lam_in], bias


@dataclass(eq=False)
class AffineOp(Op):
    """Elementwise ``y = x * scale + shift`` with per-sample constants (Normalize,
    BatchNorm in eval mode, arithmetic with constants)."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def ibp(self, ins: list[Interval]) -> Interval:
        c, r = _center_radius(ins[0])
        if self.scale is not None:
            c = c * self.scale
            r = r * self.scale.abs()
        if self.shift is not None:
            c = c + self.shift
        return c - r, c + r

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        bias = None if self.shift is None else _sum_spec(lam * self.shift)
        lam_in = lam if self.scale is None else lam * self.scale
        return [lam_in], bias


@dataclass(eq=False)
class AddOp(Op):
    """``y = a * x1 + b * x2`` of two traced tensors of the same shape (residual sums):
    the backward coefficients flow to both inputs."""

    coefs: tuple[float, float] = (1.0, 1.0)

    def ibp(self, ins: list[Interval]) -> Interval:
        (c1, r1), (c2, r2) = _center_radius(ins[0]), _center_radius(ins[1])
        a, b = self.coefs
        c = a * c1 + b * c2
        r = abs(a) * r1 + abs(b) * r2
        return c - r, c + r

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        a, b = self.coefs
        return [lam * a if a != 1 else lam, lam * b if b != 1 else lam], None


@dataclass(eq=False)
class ReshapeOp(Op):
    in_shape: tuple[int, ...] = ()

    def ibp(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        n = len(lo)
        return lo.reshape(n, *self.shape), hi.reshape(n, *self.shape)

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        return [lam.reshape(*lam.shape[:2], *self.in_shape)], None


@dataclass(eq=False)
class LinearFnOp(Op):
    """A linear map with non-negative weights given as a function (average pools that
    are not a plain strided window): IBP maps the center and the radius, the backward
    step is the function's vector-Jacobian product (autograd)."""

    fn: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    in_shape: tuple[int, ...] = ()

    def ibp(self, ins: list[Interval]) -> Interval:
        c, r = _center_radius(ins[0])
        c, r = self.fn(c), self.fn(r)
        return c - r, c + r

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        b, s = lam.shape[:2]
        flat = lam.reshape(b * s, *self.shape)
        with torch.enable_grad():
            z = torch.zeros((b * s, *self.in_shape), dtype=lam.dtype, device=lam.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.fn(z), z, flat, create_graph=flat.requires_grad)
        return [g.reshape(b, s, *self.in_shape)], None


@dataclass(eq=False)
class MaxPoolOp(Op):
    """Max pooling: IBP only (the max is monotone in every input)."""

    fn: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)

    def ibp(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return self.fn(lo), self.fn(hi)

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        raise unsupported(f"{self.name} (MaxPool2d) with a CROWN method", "it is supported by method='ibp' only")


def relu_relaxation(
    lo: torch.Tensor, hi: torch.Tensor, slope: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear relaxation of ``f(z) = max(z, slope * z)`` (ReLU: ``slope = 0``) on ``[lo, hi]``.

    Returns ``(unstable, lower_slope, upper_slope, upper_bias)``. Stable neurons are exact
    (slope 1 or ``slope``, no bias). Unstable ones (``lo < 0 < hi``) get the chord
    ``(hi - slope*lo)/(hi - lo) * (z - lo) + slope*lo`` as upper line (CROWN, Zhang et al.
    2018, Sec. 3.2, for ReLU: slope ``u/(u-l)``, intercept ``-u l/(u-l)``) and the adaptive
    lower line through the origin with slope 1 if ``hi >= -lo`` else ``slope`` (the
    choice that minimises the area between the lines).
    """
    unstable = (lo < 0) & (hi > 0)
    active = lo >= 0
    one = torch.ones_like(lo)
    stable_slope = torch.where(active, one, one * slope)
    width = torch.where(unstable, hi - lo, one)
    up = torch.where(unstable, (hi - slope * lo) / width, stable_slope)
    up_b = torch.where(unstable, -(1.0 - slope) * hi * lo / width, torch.zeros_like(lo))
    adaptive = torch.where(hi >= -lo, one, one * slope)
    low = torch.where(unstable, adaptive, stable_slope)
    return unstable, low, up, up_b


@dataclass(eq=False)
class ReluRelaxation:
    """:func:`relu_relaxation` of one layer, flattened for the backward step: ``unstable``,
    ``low``, ``up`` of shape ``(B, 1, n)``, ``up_b`` ``(B, n, 1)`` (a matrix-vector product
    gives the bias), ``any_unstable`` (without unstable neurons both lines coincide and
    there is no bias). Computed once per bound computation and layer, reused by every
    backward pass (lower and upper, every chunk, every later layer) that crosses it."""

    unstable: torch.Tensor
    low: torch.Tensor
    up: torch.Tensor
    up_b: torch.Tensor
    any_unstable: bool

    @classmethod
    def of(cls, lo: torch.Tensor, hi: torch.Tensor, slope: float) -> ReluRelaxation:
        unstable, low, up, up_b = relu_relaxation(lo.flatten(1), hi.flatten(1), slope)
        return cls(unstable.unsqueeze(1), low.unsqueeze(1), up.unsqueeze(1), up_b.unsqueeze(-1),
                   bool(unstable.any()))


@dataclass(eq=False)
class ReluOp(Op):
    """``max(z, slope z)``, ``0 <= slope <= 1`` (ReLU, LeakyReLU). With ``alpha`` (α-CROWN)
    the lower slope of each unstable neuron is ``alpha`` instead of the adaptive choice."""

    slope: float = 0.0

    def ibp(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        if self.slope == 0:
            return lo.clamp_min(0), hi.clamp_min(0)
        return torch.maximum(lo, lo * self.slope), torch.maximum(hi, hi * self.slope)

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        iv = pre[0]
        assert iv is not None
        return self.backward_relaxed(lam, ReluRelaxation.of(iv[0], iv[1], self.slope), alpha)

    def backward_relaxed(
        self, lam: torch.Tensor, rx: ReluRelaxation, alpha: torch.Tensor | None
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        """The backward step with a precomputed relaxation: the lower line where the
        coefficient is non-negative, the upper line (and its intercept) where it is
        negative, ``lam⁺ low + lam⁻ up`` and ``lam⁻ . up_b``, on ``(B, S, n)`` views
        (broadcasting the ``(B, 1, n)`` relaxation over more dimensions, or
        ``torch.where``, is several times slower on CPU; measured)."""
        b, s = lam.shape[:2]
        flat = lam.reshape(b, s, -1)
        low = rx.low if alpha is None else torch.where(rx.unstable, alpha.reshape(b, s, -1), rx.low)
        if not rx.any_unstable and alpha is None:  # both lines are the same exact line
            return [(flat * low).view(lam.shape)], None
        pos, neg = flat.clamp(min=0), flat.clamp(max=0)
        lam_in = torch.addcmul(neg * rx.up, pos, low)  # = pos * low + neg * up, bit for bit
        return [lam_in.view(lam.shape)], torch.bmm(neg, rx.up_b).squeeze(-1)


@dataclass(eq=False)
class MonotoneOp(Op):
    """A non-decreasing elementwise activation ``f``. IBP: ``[f(l), f(u)]``. CROWN: the
    simplest sound relaxation, the constant lines ``f(l) <= f(z) <= f(u)`` (no
    coefficients flow past it, so bounds restart from this layer's interval)."""

    fn: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)

    def ibp(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return self.fn(lo), self.fn(hi)

    def backward(self, lam, pre, alpha):  # type: ignore[no-untyped-def]
        iv = pre[0]
        assert iv is not None
        f_lo, f_hi = self.fn(iv[0]).unsqueeze(1), self.fn(iv[1]).unsqueeze(1)
        return [None], _sum_spec(lam.clamp(min=0) * f_lo + lam.clamp(max=0) * f_hi)


@dataclass
class BoundGraph:
    """The traced model: ``ops`` in topological order (``ops[0]`` is the input),
    ``output`` the index of the logits, ``exact[i]`` whether IBP's interval of op ``i`` is
    the exact range over a box (an elementwise-affine image of the input, or one linear
    map of one), and ``consumers[i]`` the ops reading op ``i``."""

    ops: list[Op]
    output: int
    exact: list[bool]
    consumers: list[list[int]]

    def relaxed(self) -> list[int]:
        """Ops whose input bounds a CROWN pass needs (inputs of activations), in order."""
        need = {op.inputs[0] for op in self.ops if isinstance(op, (ReluOp, MonotoneOp))}
        return sorted(need)


# -- tracing ---------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """torch.nn modules and robustlab's Normalize (whose forward checks shapes in Python)
    are leaves; everything else is traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, Normalize):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _qualname(node: fx.Node) -> str:
    """The module name inside the user's model (the trace wraps it as child ``0``)."""
    name = str(node.target)
    return name[2:] if name.startswith("0.") else name


@dataclass
class _Dep:
    """A value that depends on the input: the index of its op."""

    index: int


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD = {operator.add, torch.add, operator.iadd}
_SUB = {operator.sub, torch.sub, operator.isub}
_MUL = {operator.mul, torch.mul, operator.imul}
_DIV = {operator.truediv, torch.div, operator.itruediv}
_NEG = {operator.neg, torch.neg}
_METHOD_ARITH = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg",
                 "add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_IDENTITY_METHODS = {"contiguous", "clone"}
_META_METHODS = {"size", "dim", "numel"}
_MONOTONE_FUNCS: dict[Any, str] = {
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.elu: "elu",
    F.softplus: "softplus",
    F.hardtanh: "hardtanh",
    F.relu6: "relu6",
}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}


@dataclass
class Trace:
    """What tracing a model once yields, for rebuilding its bound graph cheaply: the fx
    graph of the wrapper ``root`` (which holds the user's model as child ``0`` and any
    constants the tracer made) and the concrete two-sample values of the input-dependent
    nodes (only their shapes and metadata are read on a rebuild)."""

    root: nn.Module
    graph: fx.Graph
    values: dict[fx.Node, Any]


def trace(model: nn.Module) -> tuple[nn.Module, fx.Graph]:
    """``torch.fx``-trace ``model`` inside a wrapper: constants the tracer creates
    (``_tensor_constant0`` for a tensor made in forward) are attached to the wrapper,
    never to the user's model."""
    root = nn.Sequential(model)
    try:
        return root, _Tracer().trace(root)
    except Exception as e:  # torch.fx raises many kinds of errors
        raise UnsupportedLayerError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}). Bound "
            f"propagation needs a forward pass without data-dependent Python control flow; "
            f"move such checks into a leaf module. Supported: {supported_text()}."
        ) from e


class _Builder:
    def __init__(self, model: nn.Module, example: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
                 traced: Trace | None = None, fx_trace: tuple[nn.Module, fx.Graph] | None = None):
        self.model = model
        self.example = example
        self.dtype = dtype
        self.device = device
        #: a rebuild reuses the trace and the recorded values of input-dependent nodes (the
        #: constants, which read the model's current parameters and buffers, are recomputed)
        self.traced = traced
        self.fx_trace = fx_trace
        self.values: dict[fx.Node, Any] = {}
        self.ops: list[Op] = []
        self.exact: list[bool] = []
        self.diag: list[bool] = []  # elementwise-affine image of the input box
        self.env: dict[fx.Node, Any] = {}
        self.dep: dict[fx.Node, int] = {}

    # -- helpers --------------------------------------------------------------------------
    def const(self, v: Any) -> torch.Tensor:
        return torch.as_tensor(v).to(device=self.device, dtype=self.dtype)

    def add(self, op: Op, kind: str) -> int:
        """Append ``op``; ``kind``: 'affine' (elementwise affine/reshape: keeps the
        exactness of its input), 'linear' (one dense linear map: exact on a box), 'other'."""
        i = len(self.ops)
        self.ops.append(op)
        src = op.inputs[0] if op.inputs else None
        if kind == "input":
            self.diag.append(True)
            self.exact.append(True)
        elif kind == "affine" and src is not None:
            self.diag.append(self.diag[src])
            self.exact.append(self.exact[src])
        elif kind == "linear" and src is not None:
            self.diag.append(False)
            self.exact.append(self.diag[src])
        else:
            self.diag.append(False)
            self.exact.append(False)
        return i

    def per_sample(self, val: torch.Tensor, what: str) -> tuple[int, ...]:
        if not isinstance(val, torch.Tensor) or val.dim() < 1 or val.shape[0] != 2:
            raise unsupported(what, "its output does not keep the batch dimension first")
        return tuple(val.shape[1:])

    def const_operand(self, c: Any, out: torch.Tensor, what: str) -> torch.Tensor:
        """A constant of an elementwise op, shaped to broadcast over one sample."""
        t = self.const(c)
        if t.dim() >= out.dim():
            if t.dim() > out.dim() or t.shape[0] != 1:
                raise unsupported(what, f"a constant of shape {tuple(t.shape)} that varies over the batch")
            t = t.squeeze(0)
        return t

    # -- the walk -------------------------------------------------------------------------
    def run_concrete(self, node: fx.Node, gm: nn.Module) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        if node.op == "call_module":
            return gm.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            assert callable(node.target)
            return node.target(*args, **kwargs)
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)

    def build(self) -> BoundGraph:
        if self.traced is not None:
            root, graph = self.traced.root, self.traced.graph
        elif self.fx_trace is not None:
            root, graph = self.fx_trace
        else:
            root, graph = trace(self.model)
        gm = root
        output: int | None = None
        have_input = False
        for node in graph.nodes:
            if node.op == "placeholder":
                if have_input:
                    if node.args:  # an optional argument with a default: a constant
                        self.env[node] = node.args[0]
                        continue
                    raise unsupported(f"a model with several inputs ({node.name})")
                have_input = True
                example = self.example if self.traced is None else self.traced.values[node]
                assert example is not None
                self.env[node] = self.values[node] = example
                self.dep[node] = self.add(InputOp(node.name, (), tuple(example.shape[1:])), "input")
            elif node.op == "get_attr":
                obj: Any = gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                self.env[node] = obj
            elif node.op == "output":
                res = node.args[0]
                if not isinstance(res, fx.Node) or res not in self.dep:
                    raise unsupported("a model whose output is not one tensor computed from its input")
                output = self.dep[res]
            else:
                deps = [n for n in node.all_input_nodes if n in self.dep]
                if not deps:
                    self.env[node] = self.run_concrete(node, gm)
                    continue
                self.visit(node, gm)
        assert output is not None
        consumers: list[list[int]] = [[] for _ in self.ops]
        for i, op in enumerate(self.ops):
            for j in op.inputs:
                consumers[j].append(i)
        out_shape = self.ops[output].shape
        if len(out_shape) != 1:
            raise unsupported(
                f"a model with outputs of shape (N, {', '.join(map(str, out_shape))})",
                "bounds are computed on logits of shape (N, K)",
            )
        if self.traced is None:
            self.traced = Trace(root, graph, self.values)
        return BoundGraph(self.ops, output, self.exact, consumers)

    def visit(self, node: fx.Node, gm: nn.Module) -> None:
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            what = f"{type(mod).__name__} (module '{_qualname(node)}')"
            make = self.module_rule(mod, node, what)
        elif node.op == "call_function":
            what = f"the function {getattr(node.target, '__name__', node.target)!s} (node '{node.name}')"
            make = self.function_rule(node, what)
        else:
            what = f"the tensor method .{node.target}() (node '{node.name}')"
            make = self.method_rule(node, what)
        if self.traced is not None:
            val = self.traced.values[node]
        else:
            with torch.no_grad():  # only the shapes (and metadata) of this value are used
                val = self.run_concrete(node, gm)
            self.values[node] = val
        if make is None:  # metadata (shapes, sizes): a constant
            self.env[node] = val
            return
        if isinstance(make, fx.Node):  # identity
            self.env[node] = val
            self.dep[node] = self.dep[make]
            return
        shape = self.per_sample(val, what)
        self.env[node] = val
        self.dep[node] = make(shape, val)

    # -- rules: each returns None (metadata), a Node (identity) or a builder ------------------
    def _single_dep(self, node: fx.Node, what: str) -> fx.Node:
        deps = [n for n in node.all_input_nodes if n in self.dep]
        first = node.args[0] if node.args else None
        if len(deps) != 1 or first is not deps[0]:
            raise unsupported(what, "it must be applied to one traced tensor")
        return deps[0]

    def _in_shape(self, src: fx.Node) -> tuple[int, ...]:
        return self.ops[self.dep[src]].shape

    def module_rule(self, mod: nn.Module, node: fx.Node, what: str) -> Any:
        src = self._single_dep(node, what)
        i = self.dep[src]
        if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            return src
        if isinstance(mod, Normalize):
            def normalize(shape: tuple[int, ...], val: torch.Tensor) -> int:
                view = (-1,) + (1,) * (len(shape) - 1)
                std = self.const(mod.std).view(view)
                mean = self.const(mod.mean).view(view)
                return self.add(AffineOp(_qualname(node), (i,), shape, 1.0 / std, -mean / std), "affine")

            return normalize
        if isinstance(mod, nn.Linear):
            return lambda shape, val: self.add(
                LinearOp(_qualname(node), (i,), shape, self.const(mod.weight),
                         None if mod.bias is None else self.const(mod.bias)),
                "linear",
            )
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise unsupported(what, f"padding_mode={mod.padding_mode!r}; only zero padding")
            return self.conv_builder(node, i, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups, what)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.running_mean is None or mod.running_var is None:
                raise unsupported(what, "BatchNorm without running statistics (track_running_stats=False) "
                                        "normalises with batch statistics even in eval mode")

            def batchnorm(shape: tuple[int, ...], val: torch.Tensor) -> int:
                assert mod.running_mean is not None and mod.running_var is not None
                view = (-1,) + (1,) * (len(shape) - 1)
                inv = torch.rsqrt(self.const(mod.running_var) + mod.eps)
                scale = inv if mod.weight is None else self.const(mod.weight) * inv
                shift = -self.const(mod.running_mean) * scale
                if mod.bias is not None:
                    shift = shift + self.const(mod.bias)
                return self.add(AffineOp(_qualname(node), (i,), shape, scale.view(view), shift.view(view)), "affine")

            return batchnorm
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape_builder(node, i)
        if isinstance(mod, nn.ReLU):
            return lambda shape, val: self.add(ReluOp(_qualname(node), (i,), shape, 0.0), "other")
        if isinstance(mod, nn.LeakyReLU):
            return self.leaky_builder(node, i, float(mod.negative_slope), what)
        if isinstance(mod, nn.ELU) and mod.alpha < 0:
            raise unsupported(what, "ELU with alpha < 0 is not monotone")
        if isinstance(mod, (nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus, nn.Hardtanh)):
            return self.monotone_builder(node, i, lambda t: mod(t.clone()))
        if isinstance(mod, nn.AvgPool2d):
            return self.avgpool_builder(node, i, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                        mod.count_include_pad, mod.divisor_override, what)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self.adaptive_builder(node, i, mod.output_size, what)
        if isinstance(mod, nn.MaxPool2d):
            if mod.return_indices:
                raise unsupported(what, "return_indices=True")
            return lambda shape, val: self.add(
                MaxPoolOp(_qualname(node), (i,), shape, lambda t: mod(t)), "other"
            )
        raise unsupported(what)

    def function_rule(self, node: fx.Node, what: str) -> Any:
        f = node.target
        if f is getattr:
            return None  # x.shape, x.dtype, ...: metadata
        if f in _ADD or f in _SUB or f in _MUL or f in _DIV or f in _NEG:
            kind = ("add" if f in _ADD else "sub" if f in _SUB else "mul" if f in _MUL
                    else "div" if f in _DIV else "neg")
            if node.kwargs and set(node.kwargs) - {"out"}:
                raise unsupported(what, f"keyword arguments {sorted(node.kwargs)}")
            return self.arith_builder(node, kind, list(node.args), what)
        if f is operator.pos:
            return self._single_dep(node, what)
        src = self._single_dep(node, what)
        i = self.dep[src]
        rest, kw = list(node.args[1:]), dict(node.kwargs)
        crest: list[Any] = list(fx.node.map_arg(rest, lambda n: self.env[n]))
        ckw: dict[str, Any] = dict(fx.node.map_arg(kw, lambda n: self.env[n]))
        if f in _RELU_FUNCS:
            return lambda shape, val: self.add(ReluOp(node.name, (i,), shape, 0.0), "other")
        if f is F.leaky_relu:
            slope = crest[0] if crest else ckw.get("negative_slope", 0.01)
            return self.leaky_builder(node, i, float(slope), what)
        if f in _MONOTONE_FUNCS:
            if f is F.elu:
                alpha = crest[0] if crest else ckw.get("alpha", 1.0)
                if float(alpha) < 0:
                    raise unsupported(what, "ELU with alpha < 0 is not monotone")
            target = f
            return self.monotone_builder(node, i, lambda t: target(t.clone(), *crest, **ckw))  # type: ignore[operator]
        if f in _DROPOUT_FUNCS:
            training = crest[1] if len(crest) > 1 else ckw.get("training", True)
            if training:
                raise unsupported(what, "dropout in training mode is random")
            return src
        if f is F.linear:
            w = crest[0] if crest else ckw["weight"]
            b = crest[1] if len(crest) > 1 else ckw.get("bias")
            return lambda shape, val: self.add(
                LinearOp(node.name, (i,), shape, self.const(w), None if b is None else self.const(b)), "linear"
            )
        if f is F.conv2d:
            names = ["weight", "bias", "stride", "padding", "dilation", "groups"]
            defaults: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
            a = {**defaults, **dict(zip(names, crest)), **ckw}
            return self.conv_builder(node, i, a["weight"], a["bias"], a["stride"], a["padding"],
                                     a["dilation"], a["groups"], what)
        if f in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze):
            return self.reshape_builder(node, i)
        if f is F.avg_pool2d:
            return self.fn_builder(node, i, lambda t: F.avg_pool2d(t, *crest, **ckw))
        if f is F.adaptive_avg_pool2d:
            size = crest[0] if crest else ckw["output_size"]
            return self.adaptive_builder(node, i, size, what)
        if f is F.max_pool2d:
            if ckw.get("return_indices") or (len(crest) > 5 and crest[5]):
                raise unsupported(what, "return_indices=True")
            return lambda shape, val: self.add(
                MaxPoolOp(node.name, (i,), shape, lambda t: F.max_pool2d(t, *crest, **ckw)), "other"
            )
        raise unsupported(what)

    def method_rule(self, node: fx.Node, what: str) -> Any:
        name = str(node.target)
        if name in _META_METHODS:
            return None
        if name in _METHOD_ARITH:
            if node.kwargs:
                raise unsupported(what, f"keyword arguments {sorted(node.kwargs)}")
            return self.arith_builder(node, _METHOD_ARITH[name], list(node.args), what)
        src = self._single_dep(node, what)
        i = self.dep[src]
        if name in _IDENTITY_METHODS:
            return src
        if name in _RESHAPE_METHODS:
            return self.reshape_builder(node, i)
        if name in ("relu", "relu_"):
            return lambda shape, val: self.add(ReluOp(node.name, (i,), shape, 0.0), "other")
        if name in ("sigmoid", "tanh"):
            fn = torch.sigmoid if name == "sigmoid" else torch.tanh
            return self.monotone_builder(node, i, fn)
        raise unsupported(what)

    # -- builders ------------------------------------------------------------------------
    def reshape_builder(self, node: fx.Node, i: int) -> Callable[[tuple[int, ...], torch.Tensor], int]:
        in_shape = self.ops[i].shape

        def make(shape: tuple[int, ...], val: torch.Tensor) -> int:
            return self.add(ReshapeOp(node.name, (i,), shape, in_shape), "affine")

        return make

    def leaky_builder(self, node: fx.Node, i: int, slope: float, what: str) -> Any:
        if slope < 0:
            raise unsupported(what, f"negative_slope={slope} < 0 is not monotone")
        if slope <= 1:
            return lambda shape, val: self.add(ReluOp(node.name, (i,), shape, slope), "other")
        return self.monotone_builder(node, i, lambda t: F.leaky_relu(t, slope))

    def monotone_builder(self, node: fx.Node, i: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        return lambda shape, val: self.add(MonotoneOp(node.name, (i,), shape, fn), "other")

    def fn_builder(self, node: fx.Node, i: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        in_shape = self.ops[i].shape
        return lambda shape, val: self.add(LinearFnOp(node.name, (i,), shape, fn, in_shape), "linear")

    def conv_builder(self, node: fx.Node, i: int, weight: Any, bias: Any, stride: Any, padding: Any,
                     dilation: Any, groups: Any, what: str) -> Any:
        in_shape = self.ops[i].shape
        if len(in_shape) != 3:
            raise unsupported(what, f"a convolution of per-sample inputs of shape {in_shape}; expected (C, H, W)")
        w = self.const(weight)
        dil = _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0, 0)
            else:  # "same"
                total = [d * (k - 1) for d, k in zip(dil, w.shape[-2:])]
                if any(t % 2 for t in total):
                    raise unsupported(what, "padding='same' with an even dilated kernel pads asymmetrically")
                pad = (total[0] // 2, total[1] // 2)
        else:
            pad = _pair(padding)

        def make(shape: tuple[int, ...], val: torch.Tensor) -> int:
            op = ConvOp(node.name, (i,), shape, w, None if bias is None else self.const(bias),
                        _pair(stride), pad, dil, int(groups), in_shape)
            return self.add(op, "linear")

        return make

    def uniform_window(self, node: fx.Node, i: int, kernel: tuple[int, int], stride: tuple[int, int],
                       pad: tuple[int, int]) -> Callable[[tuple[int, ...], torch.Tensor], int]:
        """An average over fixed windows as a depthwise convolution with weight 1/(kh kw)."""
        in_shape = self.ops[i].shape
        ch = in_shape[0]

        def make(shape: tuple[int, ...], val: torch.Tensor) -> int:
            w = torch.full((ch, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=self.dtype, device=self.device)
            op = ConvOp(node.name, (i,), shape, w, None, stride, pad, (1, 1), ch, in_shape)
            return self.add(op, "linear")

        return make

    def avgpool_builder(self, node: fx.Node, i: int, kernel: Any, stride: Any, padding: Any, ceil_mode: bool,
                        count_include_pad: bool, divisor_override: Any, what: str) -> Any:
        in_shape = self.ops[i].shape
        if len(in_shape) != 3:
            raise unsupported(what, f"pooling of per-sample inputs of shape {in_shape}; expected (C, H, W)")
        k = _pair(kernel)
        s = _pair(stride if stride is not None and stride != [] else kernel)
        p = _pair(padding)
        if not ceil_mode and divisor_override is None and (count_include_pad or p == (0, 0)):
            return self.uniform_window(node, i, k, s, p)
        return self.fn_builder(node, i, lambda t: F.avg_pool2d(t, k, s, p, ceil_mode, count_include_pad, divisor_override))

    def adaptive_builder(self, node: fx.Node, i: int, output_size: Any, what: str) -> Any:
        in_shape = self.ops[i].shape
        if len(in_shape) != 3:
            raise unsupported(what, f"pooling of per-sample inputs of shape {in_shape}; expected (C, H, W)")
        size = output_size

        def make(shape: tuple[int, ...], val: torch.Tensor) -> int:
            oh, ow = shape[1], shape[2]
            h, w = in_shape[1], in_shape[2]
            if h % oh == 0 and w % ow == 0:
                k = (h // oh, w // ow)
                return self.uniform_window(node, i, k, k, (0, 0))(shape, val)
            return self.fn_builder(node, i, lambda t: F.adaptive_avg_pool2d(t, size))(shape, val)

        return make

    def arith_builder(self, node: fx.Node, kind: str, args: Sequence[Any], what: str) -> Any:
        deps = [a for a in args if isinstance(a, fx.Node) and a in self.dep]
        if kind == "neg":
            (a,) = deps
            i = self.dep[a]
            return lambda shape, val: self.add(AffineOp(node.name, (i,), shape, self.const(-1.0), None), "affine")
        if len(args) != 2:
            raise unsupported(what, "expected two operands")
        a, b = args
        a_dep = isinstance(a, fx.Node) and a in self.dep
        b_dep = isinstance(b, fx.Node) and b in self.dep
        if a_dep and b_dep:
            if kind not in ("add", "sub"):
                raise unsupported(what, f"{kind} of two input-dependent tensors is not linear")
            assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
            ia, ib = self.dep[a], self.dep[b]
            if self.ops[ia].shape != self.ops[ib].shape:
                raise unsupported(what, f"a sum of tensors of shapes {self.ops[ia].shape} and "
                                        f"{self.ops[ib].shape} (broadcasting)")
            coefs = (1.0, 1.0 if kind == "add" else -1.0)
            return lambda shape, val: self.add(AddOp(node.name, (ia, ib), shape, coefs), "other")
        dep_node, c = (a, b) if a_dep else (b, a)
        assert isinstance(dep_node, fx.Node)
        i = self.dep[dep_node]
        cval = fx.node.map_arg(c, lambda n: self.env[n]) if isinstance(c, fx.Node) else c
        if kind == "div" and not a_dep:
            raise unsupported(what, "division by an input-dependent tensor is not linear")

        def make(shape: tuple[int, ...], val: torch.Tensor) -> int:
            if shape != self.ops[i].shape:
                raise unsupported(what, f"broadcasting a traced tensor of shape {self.ops[i].shape} to {shape}")
            t = self.const_operand(cval, val, what)
            if kind == "add":
                op = AffineOp(node.name, (i,), shape, None, t)
            elif kind == "sub":
                op = AffineOp(node.name, (i,), shape, None, -t) if a_dep else AffineOp(node.name, (i,), shape, -torch.ones_like(t), t)
            elif kind == "mul":
                op = AffineOp(node.name, (i,), shape, t, None)
            else:
                op = AffineOp(node.name, (i,), shape, 1.0 / t, None)
            return self.add(op, "affine")

        return make


def build_graph(model: nn.Module, x: torch.Tensor) -> BoundGraph:
    """Trace ``model`` (already in eval mode) and build its bound graph for inputs shaped
    like ``x`` (bounds will be computed in ``x``'s dtype, on the model's device)."""
    return trace_graph(model, x)[0]


def trace_graph(
    model: nn.Module, x: torch.Tensor, fx_trace: tuple[nn.Module, fx.Graph] | None = None
) -> tuple[BoundGraph, Trace]:
    """:func:`build_graph` and the :class:`Trace` that :func:`rebuild_graph` reuses
    (``fx_trace``: an earlier :func:`trace` of the model, which does not depend on the
    input's shape; the values of the input-dependent nodes do)."""
    param_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    example = torch.cat([x[:1], x[:1]]).detach().to(dtype=param_dtype)
    builder = _Builder(model, example, x.dtype, x.device, fx_trace=fx_trace)
    graph = builder.build()
    assert builder.traced is not None
    return graph, builder.traced


def rebuild_graph(model: nn.Module, traced: Trace, dtype: torch.dtype, device: torch.device) -> BoundGraph:
    """The bound graph of ``model`` (already in eval mode) from an earlier trace of it,
    for inputs of the traced per-sample shape: no tracing and no forward pass; the
    graph's tensors are read afresh from the model's *current* parameters, buffers and
    tensor attributes (everything that does not depend on the input is recomputed), so
    in-place updates, ``load_state_dict`` and reassigned parameters are all seen. The
    model's structure (its modules' types and its forward code) must be the traced one."""
    return _Builder(model, None, dtype, device, traced).build()


__all__ = [
    "AddOp",
    "AffineOp",
    "BoundGraph",
    "ConvOp",
    "FOLD_MAX_IN_CHANNELS",
    "InputOp",
    "Interval",
    "LinearFnOp",
    "LinearOp",
    "MaxPoolOp",
    "MonotoneOp",
    "Op",
    "ReluOp",
    "ReluRelaxation",
    "ReshapeOp",
    "SUPPORTED",
    "Trace",
    "build_graph",
    "rebuild_graph",
    "relu_relaxation",
    "trace",
    "trace_graph",
    "supported_text",
]
