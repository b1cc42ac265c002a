"""GPTQ weight rounding (Frantar et al., ICLR 2023): each quantized Linear's weight is rounded one input
column at a time, and the rounding error of a column is moved onto the columns not yet rounded, weighted
by the inverse Hessian ``H = X^T X`` of the layer's inputs on the calibration batches. The grid (scales,
zero points, bits per row) stays the one the weight quantizer already holds, so export and the integer
kernels see ordinary codes; only which code each weight gets changes.

``H`` is measured on what the layer multiplies in the calibrated student: its input after the layer's
activation quantizer. The layers are measured in one pass (not one pass per layer, as the paper does):
at 8 bits the inputs barely change when the layers below are re-rounded.

Towards the FP teacher's outputs, layer by layer (asymmetric calibration): :mod:`sdq.calib.gptq_teacher`,
which uses :func:`towards` and :func:`round_layer` from here.

>>> calibrate(student, batches, len(batches))     # activation ranges first (weights then stay put)
>>> n = gptq(student, batches)                    # every quantized Linear's weight re-rounded
>>> n = correct_bias(student, batches)            # bias correction after, on the final weights
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from sdq.calib.calibrate import each_call
from sdq.quant.modules import QuantLinear
from sdq.quant.uniform import UniformQuantizer

log = logging.getLogger(__name__)


def _eligible(mod: nn.Module) -> bool:
    q = getattr(mod, "weight_quantizer", None)
    return isinstance(mod, QuantLinear) and isinstance(q, UniformQuantizer) and q._enabled and not q.sign_mode


def grid_of(q: UniformQuantizer, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The quantizer's scale, zero point, qmin and qmax spread to every weight (each (R, C))."""
    n = q.view2d(w).shape[1]
    qmin, qmax = q.qrange()

    def spread(v) -> torch.Tensor:  # (G, 1) tensor or a python number -> (R, C)
        v = torch.as_tensor(v, dtype=w.dtype, device=w.device)
        return q.unview(v.reshape(-1, 1).expand(q.n_groups, n), w) if v.numel() > 1 else v.expand_as(w)

    return spread(q.scale.detach()), spread(q.zero_point), spread(qmin), spread(qmax)


def _inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    """(H + damp * mean(diag H) * I)^-1 in float64, inputs never seen (zero diagonal) given a unit one."""
    h = h.clone().double()
    dead = torch.diagonal(h) == 0  # inputs never seen: nothing to compensate with or for
    h[dead, dead] = 1.0
    h += torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * damp * torch.diagonal(h).mean()
    return torch.cholesky_inverse(torch.linalg.cholesky(h))


def round_columns(w: torch.Tensor, h: torch.Tensor, grid: tuple[torch.Tensor, ...], damp: float = 0.01,
                  block: int = 128, latent: bool = False) -> torch.Tensor:
    """GPTQ on w (R, C) with Hessian h (C, C) on the grid (scale, zp, qmin, qmax, each (R, C)): the
    dequantized weight (R, C), every value on the grid. With ``latent``: each column as it was when it was
    rounded (the error of the columns before it folded in), which rounds to the same codes but keeps where
    each weight sits between two grid points, for QAT to go on from.

    >>> wq = round_columns(w, x.T @ x, grid_of(quantizer, w))
    """
    scale, zp, qmin, qmax = (t.double() for t in grid)  # each (R, C)
    w, cols = w.clone().double(), w.shape[1]
    hinv = torch.linalg.cholesky(_inverse(h, damp), upper=True)  # (C, C)
    out = torch.empty_like(w)

    def quant(col: torch.Tensor, j: int) -> torch.Tensor:  # (R,) -> on the grid of column j
        s, z = scale[:, j], zp[:, j]
        return (torch.round(col * (1.0 / s)) + z).clamp(qmin[:, j], qmax[:, j]).sub(z).mul(s)

    for a in range(0, cols, block):
        b = min(a + block, cols)
        w1, err = w[:, a:b].clone(), w.new_zeros(w.shape[0], b - a)  # (R, k)
        h1 = hinv[a:b, a:b]
        for i in range(b - a):
            q = quant(w1[:, i], a + i)
            out[:, a + i] = w1[:, i] if latent else q
            e = (w1[:, i] - q) / h1[i, i]  # (R,)
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err[:, i] = e
        w[:, b:] -= err @ hinv[a:b, b:]
    return out


def what_it_multiplies(mod: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """(N, in) float input -> what the weight multiplies: after the layer's rotation and activation quantizer."""
    x = mod.rotate_input(x.float())
    return mod.act_quantizer(x) if mod.act_quantizer is not None else x


def targets(model: nn.Module, warn: bool = True) -> dict[str, QuantLinear]:
    """The quantized Linears GPTQ re-rounds (uniform grids), after :func:`calibrate` (refused before); those
    off a uniform grid (k-means or binary codes through a ``quant.overrides`` entry, 1-bit sign weights)
    keep their rounding, and a warning names them (``warn``)."""
    layers = {name: mod for name, mod in model.named_modules() if _eligible(mod)}
    if any(q._phase == 0 for m in layers.values() for q in (m.weight_quantizer, m.act_quantizer) if q is not None):
        raise ValueError("gptq: the quantizers are still calibrating; call calibrate(model, batches, n) first")
    kept = [name for name, mod in model.named_modules() if isinstance(mod, QuantLinear) and name not in layers
            and mod.weight_quantizer is not None and mod.weight_quantizer._enabled]
    if kept and warn:
        log.warning("gptq: %d quantized Linear weights not on a uniform grid keep their rounding: %s%s",
                    len(kept), ", ".join(kept[:4]), ", ..." if len(kept) > 4 else "")
    return layers


@torch.no_grad()
def gptq(model: nn.Module, batches: Iterable[dict], damp: float = 0.01) -> int:
    """Re-round the weight of every quantized Linear (uniform grids, :func:`targets`) with GPTQ on ``batches``
    (padding tokens excluded), after :func:`calibrate`; returns how many weight matrices it re-rounded. ``damp``: the
    fraction of the mean diagonal added to ``H``. Towards the teacher's outputs instead, layer by layer:
    :func:`sdq.calib.gptq_teacher.gptq_teacher`.

    Before QAT (quantizers in their ``learn`` phase) each weight keeps its latent position between grid
    points (:func:`round_columns` ``latent``), which rounds to GPTQ's codes; weights set onto the grid points
    themselves give QAT no sub-step signal (and LSQ's step gradient vanishes on them)."""
    layers = targets(model)
    hs = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}

    def add(name: str, mod: QuantLinear, x: torch.Tensor, out: torch.Tensor) -> None:
        xq = what_it_multiplies(mod, x)  # (N, in)
        hs[name] += (xq.T @ xq).double().cpu()

    each_call(model, batches, layers, add)
    for name, mod in layers.items():
        round_layer(mod, hs[name], damp)
    return len(layers)


def towards(w: torch.Tensor, h: torch.Tensor, g: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The weight (R, C) that maps the student's input X_q onto the teacher's output X_t w^T in least
    squares, ``w + w (g - h) h^-1`` with ``h = X_q^T X_q`` and ``g = X_t^T X_q`` (each (C, C)), h damped
    as in :func:`round_columns`; equal to w when the inputs are equal.

    >>> w_star = towards(w, xq.T @ xq, xt.T @ xq)   # ~ torch.linalg.lstsq(xq, xt @ w.T).solution.T
    """
    w = w.double()
    return w + (w @ (g.double() - h.double())) @ _inverse(h, damp)


@torch.no_grad()
def round_layer(mod: QuantLinear, h: torch.Tensor, damp: float, g: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> None:
    """GPTQ on the layer's weight (or on ``target``, e.g. the teacher's weight) with Hessian h, written into
    the layer; with g (asymmetric) on :func:`towards`'s weight."""
    w = (target if target is not None else mod.weight).detach().cpu().double()  # (R, C)
    if g is not None:
        w = towards(w, h, g, damp)
    latent = mod.weight_quantizer.phase_name == "learn"
    mod.weight.copy_(round_columns(w, h, grid_of(mod.weight_quantizer, w), damp, latent=latent))
